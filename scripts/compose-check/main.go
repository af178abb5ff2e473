// Command compose-check loads a Compose file with compose-go, the parser Docker Compose itself uses,
// and prints the normalized project as JSON. It exits 1 with the parser's error when the file is
// invalid (schema, interpolation, consistency), so a test can check docker-compose.yml without a
// Docker engine.
//
// Usage: compose-check [--profile name]... <compose file>
//
// Variables for interpolation come from the process environment only: no .env file is read, so the
// result does not depend on a developer's local secrets.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type profiles []string

func (p *profiles) String() string { return strings.Join(*p, ",") }

func (p *profiles) Set(v string) error {
	*p = append(*p, v)
	return nil
}

func main() {
	var active profiles
	flag.Var(&active, "profile", "enable a Compose profile (repeatable)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: compose-check [--profile name]... <compose file>")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	out, err := load(flag.Arg(0), active)
	if err != nil {
		fmt.Fprintf(os.Stderr, "compose-check: %v\n", err)
		os.Exit(1)
	}
	os.Stdout.Write(append(out, '\n'))
}

// load parses, validates, interpolates and normalizes one Compose file, as `docker compose config` does.
func load(file string, active []string) ([]byte, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	options, err := cli.NewProjectOptions(
		[]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithOsEnv,
		cli.WithProfiles(active),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return nil, err
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return nil, err
	}
	return project.MarshalJSON()
}
