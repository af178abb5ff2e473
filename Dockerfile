# The MARE image: the `mare` CLI with the compiled code and a prebuilt workflow bundle. Every MARE
# service in docker-compose.yml runs it with another command (worker, codec-server, setup, api).

# Build stage: dev dependencies (TypeScript) for `npm run build`, then only the runtime ones are kept.
FROM node:22-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json ./
# As in .ci/run: when npm ci refuses the lockfile (other platforms' optional packages missing from
# it), install from the same lockfile with npm install and fail if that changed a locked version.
RUN cp package-lock.json /tmp/package-lock.before \
 && if ! npm ci --no-audit --no-fund; then \
      npm install --no-audit --no-fund && cmp -s package-lock.json /tmp/package-lock.before; \
    fi
COPY . .
RUN npm run build \
 && node dist/cli/mare.js bundle /app/dist/workflow-bundle.js \
 && npm prune --omit=dev --no-audit --no-fund

# Runtime stage: same Debian release as the build stage, so native modules built or fetched there load.
FROM node:22-bookworm-slim
ENV NODE_ENV=production \
    MARE_DATA_DIR=/var/lib/mare \
    MARE_WORKSPACE_DIR=/var/lib/mare/workspaces \
    MARE_WORKFLOW_BUNDLE=/app/dist/workflow-bundle.js
WORKDIR /app
COPY --from=build /app /app
# bubblewrap: command_succeeds criteria run only in its sandbox (docs/threat-model-sandbox.md); it also
# needs user namespaces, which Docker's default seccomp profile refuses (the criteria then fail, nothing runs).
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
# A named volume mounted on the workspaces directory starts with this ownership.
RUN mkdir -p /var/lib/mare/workspaces && chown -R node:node /var/lib/mare
USER node
ENTRYPOINT ["node", "/app/dist/cli/mare.js"]
CMD ["--help"]
