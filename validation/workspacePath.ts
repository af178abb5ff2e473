import { z } from 'zod';

/** A workspace-relative path: no absolute paths, no `..` segments (checked again on disk by the tools). */
export const WorkspacePath = z
  .string()
  .min(1)
  .max(512)
  .refine((p) => !p.startsWith('/') && !p.split(/[\\/]/).includes('..'), {
    message: 'must be a relative path inside the task workspace (no leading "/" and no "..")',
  });
