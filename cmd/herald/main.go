// Command herald is Herald's command line: the daemon's status and inbox, a
// health check (doctor), sending a test push, and registering an app.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const usage = `Usage: herald COMMAND [flags] [args]

Commands:
  status [--json]          the daemon's connection, registrations, queues and counters
  inbox APP_ID             the messages the daemon holds for an app (not consumed)
  doctor                   check the setup and say how to fix what is missing
  send [flags] ENDPOINT MESSAGE
                           post MESSAGE to a Web Push endpoint, as an app server would
  register APP_ID          register a Lomiri app and print its token (for demos and tests)
  click-hook               rebuild the click helper database and the System Settings app list (run by click)
  help [COMMAND]           show help

Run 'herald help COMMAND' or 'herald COMMAND --help' for a command's flags.
`

type command struct {
	name, args, help string
	run              func(ctx context.Context, e *cli, fs *flag.FlagSet, args []string) error
	flags            func(fs *flag.FlagSet)
}

// cli carries the command's environment.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

// errUsage marks an error in the command line (exit status 2).
var errUsage = errors.New("usage")

// errFailed marks a command that printed its own failure (exit status 1).
var errFailed = errors.New("failed")

func commands() []*command {
	return []*command{statusCmd(), inboxCmd(), doctorCmd(), sendCmd(), registerCmd(), clickHookCmd()}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &cli{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	os.Exit(e.main(ctx, os.Args[1:]))
}

func (e *cli) main(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, usage)
		return 2
	}
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		if name == "help" && len(args) > 1 {
			for _, c := range commands() {
				if c.name == args[1] {
					fs := c.flagSet(e)
					fs.SetOutput(e.stdout)
					fs.Usage()
					return 0
				}
			}
			fmt.Fprintf(e.stderr, "herald: unknown command %q\n", args[1])
			return 2
		}
		fmt.Fprint(e.stdout, usage)
		return 0
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		fs := c.flagSet(e)
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		err := c.run(ctx, e, fs, fs.Args())
		switch {
		case err == nil:
			return 0
		case errors.Is(err, errFailed):
			return 1
		case errors.Is(err, errUsage):
			fmt.Fprintf(e.stderr, "herald %s: %v\n", name, err)
			fmt.Fprintf(e.stderr, "usage: herald %s %s\n", c.name, c.args)
			return 2
		default:
			fmt.Fprintf(e.stderr, "herald %s: %v\n", name, err)
			return 1
		}
	}
	fmt.Fprintf(e.stderr, "herald: unknown command %q (see 'herald --help')\n", name)
	return 2
}

func (c *command) flagSet(e *cli) *flag.FlagSet {
	fs := flag.NewFlagSet("herald "+c.name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: herald %s %s\n\n%s\n", c.name, c.args, c.help)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(fs.Output(), "\nFlags:")
			fs.PrintDefaults()
		}
	}
	if c.flags != nil {
		c.flags(fs)
	}
	return fs
}
