package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/helpers"
	"github.com/heraldpush/herald/notifications"
)

// clickHookCmd is what the push-helper click hook runs (through
// /usr/libexec/herald/click-hook-wrapper) after every click install and
// removal, as the user: it rebuilds helpers_data.json from the hook links of
// both names and the System Settings "applications" list.
func clickHookCmd() *command {
	return &command{
		name: "click-hook", args: "",
		help: "Rebuilds ~/.local/share/{lomiri-push-service,ubuntu-push-client}/helpers_data.json from the\npush-helper click hook links and writes the apps with a helper (and the legacy helpers)\nto the 'applications' list of System Settings ▸ Notifications (GSettings\ncom.lomiri.notifications.settings.applications and its Ubuntu fallback). Run by click.",
		run: func(ctx context.Context, e *cli, fs *flag.FlagSet, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%w: unexpected argument %q", errUsage, args[0])
			}
			return e.clickHook(ctx)
		},
	}
}

func (e *cli) clickHook(ctx context.Context) error {
	env := config.ReadEnv(e.getenv)
	if env.DataHome == "" {
		return errors.New("no data directory: HOME and XDG_DATA_HOME are unset")
	}
	var apps []string
	var errs []error
	for _, sub := range []string{"lomiri-push-service", "ubuntu-push-client"} {
		dir := filepath.Join(env.DataHome, sub)
		h, err := helpers.BuildClickHook(filepath.Join(dir, "helpers"))
		if err != nil {
			fmt.Fprintf(e.stderr, "herald click-hook: %v\n", err)
		}
		if len(h.Data) == 0 && !exists(filepath.Join(dir, "helpers_data.json")) {
			continue
		}
		if err := helpers.WriteHelpersData(filepath.Join(dir, "helpers_data.json"), h.Data); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(e.stdout, "%s: %d helpers\n", filepath.Join(dir, "helpers_data.json"), len(h.Data))
		apps = append(apps, h.Apps...)
	}
	apps = append(apps, helpers.LegacyApps(helpers.LegacyDirs())...)
	slices.Sort(apps)
	apps = slices.Compact(apps)
	written, err := notifications.SetApplications(ctx, "", apps)
	if err != nil {
		errs = append(errs, err)
	}
	for _, s := range written {
		fmt.Fprintf(e.stdout, "%s applications: %d entries\n", s, len(apps))
	}
	return errors.Join(errs...)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
