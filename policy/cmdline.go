package policy

import (
	"fmt"
	"slices"
	"strings"
)

// DefaultForbiddenParams are kernel parameters that open a root shell before
// any login, switch off a kernel security mechanism, or stop the boot for
// interactive repair. Derivation forbids those of them the known-good
// machine does not itself use.
var DefaultForbiddenParams = []string{
	"init", "rdinit", "rd.break", "rd.shell", "single", "emergency", "rescue",
	"systemd.debug_shell", "systemd.unit=emergency.target", "systemd.unit=rescue.target",
	"selinux=0", "enforcing=0", "apparmor=0", "security=none", "lockdown=none",
	"module.sig_enforce=0", "ima_appraise=off", "ima_appraise=fix", "loadpin.enforce=0",
	"mitigations=off", "nosmap", "nosmep", "iommu=off",
}

// maxCmdlineLen bounds a kernel command line taken from an event.
const maxCmdlineLen = 64 << 10

// KernelParams splits a kernel command line into parameters the way the
// kernel does (whitespace-separated, double quotes group), dropping a
// trailing NUL and the leading kernel path a boot loader puts first
// ("(hd0,gpt2)/boot/vmlinuz-…" or "/vmlinuz-…", the BOOT_IMAGE).
func KernelParams(cmdline string) []string {
	if len(cmdline) > maxCmdlineLen {
		cmdline = cmdline[:maxCmdlineLen]
	}
	cmdline = strings.TrimRight(cmdline, "\x00")
	var out []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range cmdline {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
			cur.WriteRune(r)
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			inWord = true
			cur.WriteRune(r)
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	if len(out) > 0 && !strings.Contains(out[0], "=") && (strings.HasPrefix(out[0], "/") || strings.HasPrefix(out[0], "(")) {
		out = out[1:]
	}
	return out
}

// paramName returns a parameter's name: the part before "=", without quotes.
func paramName(p string) string {
	name, _, _ := strings.Cut(p, "=")
	return strings.Trim(name, `"`)
}

type compiledCmdline struct {
	exact            set
	allowedNames     set // entries without "=": any value
	allowedExact     set // entries with "=": that value
	allowAll         bool
	forbiddenNames   set
	forbiddenExact   set
	forbiddenEntries []string
}

func compileCmdline(r *CmdlineRules) *compiledCmdline {
	c := &compiledCmdline{
		exact:          set{},
		allowedNames:   set{},
		allowedExact:   set{},
		forbiddenNames: set{},
		forbiddenExact: set{},
		allowAll:       r.Allowed == nil,
	}
	for _, e := range r.Exact {
		c.exact[strings.Join(KernelParams(e), " ")] = struct{}{}
	}
	for _, a := range r.Allowed {
		if strings.Contains(a, "=") {
			c.allowedExact[a] = struct{}{}
		} else {
			c.allowedNames[a] = struct{}{}
		}
	}
	for _, f := range r.Forbidden {
		if strings.Contains(f, "=") {
			c.forbiddenExact[f] = struct{}{}
		} else {
			c.forbiddenNames[f] = struct{}{}
		}
	}
	c.forbiddenEntries = slices.Clone(r.Forbidden)
	return c
}

// cmdlineFinding is one rule a command line breaks.
type cmdlineFinding struct {
	forbidden bool // a forbidden parameter (always contraindicated)
	msg       string
}

// check applies the rules to a command line's parameters.
func (c *compiledCmdline) check(params []string) []cmdlineFinding {
	var out []cmdlineFinding
	var forbidden, notAllowed []string
	for _, p := range params {
		name := paramName(p)
		if c.forbiddenNames.has(name) || c.forbiddenExact.has(p) {
			forbidden = append(forbidden, p)
			continue
		}
		if !c.allowAll && !c.allowedNames.has(name) && !c.allowedExact.has(p) {
			notAllowed = append(notAllowed, p)
		}
	}
	if len(forbidden) > 0 {
		out = append(out, cmdlineFinding{forbidden: true, msg: fmt.Sprintf("forbidden kernel parameter %s", strings.Join(forbidden, ", "))})
	}
	if len(notAllowed) > 0 {
		out = append(out, cmdlineFinding{msg: fmt.Sprintf("kernel parameter %s is not in the allowed list", strings.Join(notAllowed, ", "))})
	}
	if len(c.exact) > 0 && len(out) == 0 && !c.exact.has(strings.Join(params, " ")) {
		out = append(out, cmdlineFinding{msg: "the kernel command line is none of the exact command lines allowed"})
	}
	return out
}
