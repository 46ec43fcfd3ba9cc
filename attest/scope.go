package attest

import (
	"fmt"
	"strings"
)

// Resources, actions and scope entries.
//
// A resource is a typed id in Cedar's entity syntax:
//
//	resource = type "::" '"' id '"'       ; Document::"customer-A/report-7"
//	type     = ident *("::" ident)        ; ident = [A-Za-z_][A-Za-z0-9_]*
//	id       = 1*(any printable character except '"', '\' and '*') ["*"]
//
// An id ending in "*" is a pattern: it names every resource of that type
// whose id starts with what comes before the "*" (Document::"customer-A/*").
// "*" anywhere else is refused, so patterns are prefixes and one pattern
// covering another is a prefix test.
//
// An action is "service:verb" ([a-z0-9-]+ ":" [a-z0-9-]+), e.g.
// "documents:read". A scope entry (credential claim 9) is an action and a
// resource joined by ":":
//
//	documents:read:Document::"customer-A/*"

// Limits of resources and actions.
const (
	MaxActionLen = 64
)

// Resource is a parsed typed resource id or pattern.
type Resource struct {
	Type string // entity type, e.g. "Document"
	ID   string // id; a pattern ends in "*"
}

// ParseResource parses Type::"id" (see the grammar above).
func ParseResource(s string) (Resource, error) {
	if len(s) > MaxResourceLen {
		return Resource{}, fmt.Errorf("resource is %d bytes; at most %d are allowed", len(s), MaxResourceLen)
	}
	i := strings.Index(s, `::"`)
	if i <= 0 || !strings.HasSuffix(s, `"`) || len(s) < i+4 {
		return Resource{}, fmt.Errorf("resource %q is not Type::\"id\" (e.g. Document::\"customer-A/report-7\")", s)
	}
	typ, id := s[:i], s[i+3:len(s)-1]
	for _, part := range strings.Split(typ, "::") {
		if !isIdent(part) {
			return Resource{}, fmt.Errorf("resource %q: type %q is not an identifier ([A-Za-z_][A-Za-z0-9_]*, joined by ::)", s, typ)
		}
	}
	if id == "" {
		return Resource{}, fmt.Errorf("resource %q has an empty id", s)
	}
	for j, r := range id {
		switch {
		case r == '"' || r == '\\':
			return Resource{}, fmt.Errorf("resource %q: ids may not contain '\"' or '\\'", s)
		case r < 0x20 || r == 0x7f:
			return Resource{}, fmt.Errorf("resource %q: id contains a control character", s)
		case r == '*' && j != len(id)-1:
			return Resource{}, fmt.Errorf("resource %q: '*' is allowed only at the end of an id (a prefix pattern)", s)
		}
	}
	return Resource{Type: typ, ID: id}, nil
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_' || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z'):
		case i > 0 && r >= '0' && r <= '9':
		default:
			return false
		}
	}
	return true
}

// String returns r in Type::"id" form.
func (r Resource) String() string { return r.Type + `::"` + r.ID + `"` }

// IsPattern reports whether r names a set of resources (its id ends in "*").
func (r Resource) IsPattern() bool { return strings.HasSuffix(r.ID, "*") }

// Covers reports whether every resource o names is named by r: same type,
// and o's id (or prefix) starts with r's prefix when r is a pattern, or
// equals r's id when it is not.
func (r Resource) Covers(o Resource) bool {
	if r.Type != o.Type {
		return false
	}
	if !r.IsPattern() {
		return r.ID == o.ID
	}
	return strings.HasPrefix(o.ID, r.ID[:len(r.ID)-1])
}

// ValidAction checks that a is "service:verb" with lower-case letters,
// digits and dashes.
func ValidAction(a string) error {
	if len(a) > MaxActionLen {
		return fmt.Errorf("action %q is longer than %d bytes", a, MaxActionLen)
	}
	svc, verb, ok := strings.Cut(a, ":")
	if !ok || !isActionWord(svc) || !isActionWord(verb) {
		return fmt.Errorf("action %q is not service:verb (lower-case letters, digits, '-'; e.g. documents:read)", a)
	}
	return nil
}

func isActionWord(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r == '-' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

// ScopeEntry is one granted action on one resource or resource pattern.
type ScopeEntry struct {
	Action   string
	Resource Resource
}

// String returns the claim form "action:resource".
func (e ScopeEntry) String() string { return e.Action + ":" + e.Resource.String() }

// ParseScopeEntry parses "service:verb:Type::\"id\"".
func ParseScopeEntry(s string) (ScopeEntry, error) {
	first := strings.IndexByte(s, ':')
	if first < 0 {
		return ScopeEntry{}, fmt.Errorf("scope entry %q is not action:resource", s)
	}
	second := strings.IndexByte(s[first+1:], ':')
	if second < 0 {
		return ScopeEntry{}, fmt.Errorf("scope entry %q is not action:resource", s)
	}
	action := s[:first+1+second]
	if err := ValidAction(action); err != nil {
		return ScopeEntry{}, fmt.Errorf("scope entry %q: %w", s, err)
	}
	res, err := ParseResource(s[first+2+second:])
	if err != nil {
		return ScopeEntry{}, fmt.Errorf("scope entry %q: %w", s, err)
	}
	return ScopeEntry{Action: action, Resource: res}, nil
}

// ScopeAllows reports whether scope (a credential's claim 9) grants action
// on the concrete resource res. Entries that do not parse grant nothing.
func ScopeAllows(scope []string, action string, res Resource) bool {
	for _, s := range scope {
		// Cheap pre-filter before parsing: the entry must start with "action:".
		if len(s) <= len(action) || s[len(action)] != ':' || s[:len(action)] != action {
			continue
		}
		e, err := ParseScopeEntry(s)
		if err != nil || e.Action != action {
			continue
		}
		if e.Resource.Covers(res) {
			return true
		}
	}
	return false
}
