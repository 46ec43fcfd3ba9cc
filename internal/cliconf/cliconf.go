// Package cliconf gives every Vouch command the same three layers of
// configuration, strongest first: command-line flags, VOUCH_* environment
// variables, and a YAML configuration file (--config). It also sets up the
// structured logger every command uses.
package cliconf

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix prefixes every environment variable that sets a flag:
// --image-digest is VOUCH_IMAGE_DIGEST.
const EnvPrefix = "VOUCH_"

// maxConfigSize bounds a configuration file.
const maxConfigSize = 1 << 20

// EnvName returns the environment variable that sets flag name.
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// AddFlags adds the flags every command shares: --config, --log-level and
// --log-format. Call it on the root command's persistent flags.
func AddFlags(fs *pflag.FlagSet) {
	fs.String("config", "", "YAML file of flag values (keys are flag names); env "+EnvName("config"))
	fs.String("log-level", "info", "log level: debug, info, warn, error")
	fs.String("log-format", "text", "log format: text or json")
}

// Apply fills every flag of cmd that was not given on the command line, first
// from its VOUCH_* environment variable, then from the configuration file.
// Install it as the root command's PersistentPreRunE (with Logger).
func Apply(cmd *cobra.Command) error {
	fs := cmd.Flags()
	file := map[string]any{}
	path, _ := fs.GetString("config")
	if !fs.Changed("config") {
		if v, ok := os.LookupEnv(EnvName("config")); ok {
			path = v
		}
	}
	if path != "" {
		var err error
		if file, err = readFile(path); err != nil {
			return err
		}
	}
	var firstErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || firstErr != nil || f.Name == "config" || f.Name == "help" {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if err := setFlag(fs, f, v); err != nil {
				firstErr = fmt.Errorf("environment variable %s: %w", EnvName(f.Name), err)
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := setFromYAML(fs, f, v); err != nil {
				firstErr = fmt.Errorf("config file %s, key %q: %w", path, f.Name, err)
			}
		}
	})
	return firstErr
}

func readFile(path string) (map[string]any, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("config file %s is larger than %d bytes", path, maxConfigSize)
	}
	m := map[string]any{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("config file %s is not a YAML map of flag names to values: %w", path, err)
	}
	return m, nil
}

func setFromYAML(fs *pflag.FlagSet, f *pflag.Flag, v any) error {
	if list, ok := v.([]any); ok {
		for _, item := range list {
			if err := setFlag(fs, f, fmt.Sprint(item)); err != nil {
				return err
			}
		}
		return nil
	}
	return setFlag(fs, f, fmt.Sprint(v))
}

// setFlag sets through the FlagSet so that Changed is recorded.
func setFlag(fs *pflag.FlagSet, f *pflag.Flag, v string) error {
	return fs.Set(f.Name, v)
}

// Logger builds the slog logger that --log-level and --log-format ask for,
// writing to w (normally stderr).
func Logger(cmd *cobra.Command, w io.Writer) (*slog.Logger, error) {
	levelName, _ := cmd.Flags().GetString("log-level")
	format, _ := cmd.Flags().GetString("log-format")
	var level slog.Level
	if err := level.UnmarshalText([]byte(levelName)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", levelName)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}
