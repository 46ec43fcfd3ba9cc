package authz

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"sort"

	"go.yaml.in/yaml/v3"

	"github.com/vouch-dev/vouch/attest"
)

// Intent is one entry of the intent catalogue: what an agent acting under it
// may need to do.
type Intent struct {
	Name        string `yaml:"-"`
	Description string `yaml:"description,omitempty"`
	// Actions may be granted standing, in a credential's scope.
	Actions []string `yaml:"actions"`
	// Elevate may be granted only just in time (POST /v1/elevate): one
	// action on one resource, single use, short-lived.
	Elevate []string `yaml:"elevate,omitempty"`
}

// Allows reports whether the intent may need action, standing or (when
// elevated) just in time.
func (in *Intent) Allows(action string, elevated bool) bool {
	if slices.Contains(in.Actions, action) {
		return true
	}
	return elevated && slices.Contains(in.Elevate, action)
}

// Catalogue is the set of intents, by name.
type Catalogue struct {
	Intents map[string]*Intent `yaml:"intents"`
}

var intentName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// maxCatalogueSize bounds the catalogue file.
const maxCatalogueSize = 1 << 20

// ParseCatalogue parses and checks an intent catalogue (YAML). Every action
// must be "service:verb" and declared in the schema (known lists the
// schema's actions); unknown YAML keys are refused.
func ParseCatalogue(b []byte, known map[string]bool) (*Catalogue, error) {
	if len(b) > maxCatalogueSize {
		return nil, fmt.Errorf("intent catalogue is %d bytes; at most %d are read", len(b), maxCatalogueSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var c Catalogue
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("intent catalogue: %w", err)
	}
	if len(c.Intents) == 0 {
		return nil, fmt.Errorf("intent catalogue declares no intents")
	}
	for name, in := range c.Intents {
		if in == nil {
			return nil, fmt.Errorf("intent %q is empty", name)
		}
		if !intentName.MatchString(name) {
			return nil, fmt.Errorf("intent name %q: use lower-case letters, digits and '-' (at most 64)", name)
		}
		in.Name = name
		if len(in.Actions) == 0 && len(in.Elevate) == 0 {
			return nil, fmt.Errorf("intent %q lists no actions", name)
		}
		for _, list := range [][]string{in.Actions, in.Elevate} {
			for _, a := range list {
				if err := attest.ValidAction(a); err != nil {
					return nil, fmt.Errorf("intent %q: %w", name, err)
				}
				if !known[a] {
					return nil, fmt.Errorf("intent %q: action %q is not declared in the Cedar schema", name, a)
				}
			}
		}
		for _, a := range in.Elevate {
			if slices.Contains(in.Actions, a) {
				return nil, fmt.Errorf("intent %q: action %q is both standing and elevate-only; list it once", name, a)
			}
		}
	}
	return &c, nil
}

// Names returns the intent names, sorted.
func (c *Catalogue) Names() []string {
	out := make([]string, 0, len(c.Intents))
	for n := range c.Intents {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
