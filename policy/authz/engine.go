package authz

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync/atomic"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
	"github.com/cedar-policy/cedar-go/x/exp/schema"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

// File layout of a policy directory.
const (
	SchemaFile    = "schema.cedarschema"
	CatalogueFile = "intents.yaml"
	PoliciesDir   = "policies"
)

// Limits on policy input.
const (
	maxPolicyFileSize = 1 << 20
	maxPolicyFiles    = 256
	maxSchemaSize     = 1 << 20
)

// defaultFS holds the policy set that ships with Vouch.
//
//go:embed default
var defaultFS embed.FS

// DefaultFS returns the built-in policy directory (schema, intent
// catalogue, example policies), for `vouch authz` style inspection.
func DefaultFS() fs.FS {
	sub, err := fs.Sub(defaultFS, "default")
	if err != nil {
		panic(err) // embedded at build time
	}
	return sub
}

// Default loads the built-in policy set.
func Default() (*Engine, error) { return Load(DefaultFS()) }

// Engine is one loaded, validated policy set: Cedar schema, intent
// catalogue and Cedar policies. It is immutable and safe for concurrent use;
// a reload builds a new Engine (see [Holder]).
type Engine struct {
	id        string
	policies  *cedar.PolicySet
	ids       []string                   // policy ids, sorted
	actions   map[string]types.EntityUID // "documents:read" → Action::"documents:read"
	appliesTo map[string][]string        // action → resource entity types
	resources map[string]bool            // resource entity types
	catalogue *Catalogue
}

// ID is a content hash of the files the engine was loaded from: the
// authorization policy id recorded with every decision.
func (e *Engine) ID() string { return e.id }

// PolicyIDs returns the ids of the loaded policies, sorted.
func (e *Engine) PolicyIDs() []string { return append([]string(nil), e.ids...) }

// Catalogue returns the intent catalogue.
func (e *Engine) Catalogue() *Catalogue { return e.catalogue }

// Intent returns the named intent.
func (e *Engine) Intent(name string) (*Intent, bool) {
	in, ok := e.catalogue.Intents[name]
	return in, ok
}

// AppliesTo returns the resource types action applies to in the schema.
func (e *Engine) AppliesTo(action string) []string { return e.appliesTo[action] }

// Load reads a policy directory from fsys: SchemaFile, CatalogueFile and
// PoliciesDir/*.cedar. The schema is parsed and resolved; every policy is
// parsed and validated against it (cedar-go's experimental validator,
// strict mode: unknown entity types, actions, attributes and type errors
// are refused); every intent's actions must be schema actions. Policy ids
// come from an @id("…") annotation, which every policy must carry and which
// must be unique. Any failure refuses the whole directory.
func Load(fsys fs.FS) (*Engine, error) {
	h := sha256.New()
	schemaText, err := readBounded(fsys, SchemaFile, maxSchemaSize)
	if err != nil {
		return nil, err
	}
	hashFile(h, SchemaFile, schemaText)
	var sch schema.Schema
	sch.SetFilename(SchemaFile)
	if err := sch.UnmarshalCedar(schemaText); err != nil {
		return nil, fmt.Errorf("%s: %w", SchemaFile, err)
	}
	rs, err := sch.Resolve()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", SchemaFile, err)
	}
	e := &Engine{
		actions:   map[string]types.EntityUID{},
		appliesTo: map[string][]string{},
		resources: map[string]bool{},
		policies:  cedar.NewPolicySet(),
	}
	known := map[string]bool{}
	for uid, act := range rs.Actions {
		name := string(uid.ID)
		if uid.Type != "Action" {
			return nil, fmt.Errorf("%s: action %s: declare actions outside namespaces (type Action)", SchemaFile, uid)
		}
		if act.AppliesTo == nil || len(act.AppliesTo.Resources) == 0 {
			return nil, fmt.Errorf("%s: action %q applies to no resource type", SchemaFile, name)
		}
		known[name] = true
		e.actions[name] = uid
		for _, rt := range act.AppliesTo.Resources {
			e.appliesTo[name] = append(e.appliesTo[name], string(rt))
			e.resources[string(rt)] = true
		}
		sort.Strings(e.appliesTo[name])
	}

	catText, err := readBounded(fsys, CatalogueFile, maxCatalogueSize)
	if err != nil {
		return nil, err
	}
	hashFile(h, CatalogueFile, catText)
	if e.catalogue, err = ParseCatalogue(catText, known); err != nil {
		return nil, fmt.Errorf("%s: %w", CatalogueFile, err)
	}

	files, err := fs.Glob(fsys, path.Join(PoliciesDir, "*.cedar"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s holds no .cedar files: with no policy every request is denied; add one", PoliciesDir)
	}
	if len(files) > maxPolicyFiles {
		return nil, fmt.Errorf("%s holds %d policy files; at most %d are read", PoliciesDir, len(files), maxPolicyFiles)
	}
	sort.Strings(files)
	v := validate.New(rs, validate.WithStrict())
	var errs []error
	for _, f := range files {
		text, err := readBounded(fsys, f, maxPolicyFileSize)
		if err != nil {
			return nil, err
		}
		hashFile(h, f, text)
		list, err := cedar.NewPolicyListFromBytes(f, text)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			continue
		}
		for i, p := range list {
			id, ok := p.Annotations()["id"]
			if !ok || id == "" {
				errs = append(errs, fmt.Errorf("%s: policy %d (line %d) has no @id(\"…\") annotation", f, i, p.Position().Line))
				continue
			}
			if err := v.Policy(string(id), (*xast.Policy)(p.AST())); err != nil {
				errs = append(errs, fmt.Errorf("%s:%d: %w", f, p.Position().Line, err))
				continue
			}
			if !e.policies.Add(cedar.PolicyID(id), p) {
				errs = append(errs, fmt.Errorf("%s: policy id %q is used twice", f, id))
				continue
			}
			e.ids = append(e.ids, string(id))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("policy set refused: %w", errors.Join(errs...))
	}
	sort.Strings(e.ids)
	e.id = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return e, nil
}

func readBounded(fsys fs.FS, name string, max int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, fmt.Errorf("policy directory: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, max)
	}
	return b, nil
}

func hashFile(h io.Writer, name string, b []byte) {
	fmt.Fprintf(h, "%s\x00%d\x00", strings.TrimPrefix(name, "./"), len(b))
	h.Write(b)
}

// Holder holds the engine in force and swaps it atomically, so that each
// decision sees one consistent policy set and a failed reload leaves the
// old one in force.
type Holder struct {
	cur atomic.Pointer[Engine]
}

// NewHolder returns a holder serving e.
func NewHolder(e *Engine) *Holder {
	h := &Holder{}
	h.cur.Store(e)
	return h
}

// Engine returns the engine in force.
func (h *Holder) Engine() *Engine { return h.cur.Load() }

// Reload loads a new engine with load and puts it in force. On error the
// engine in force is kept and the error returned.
func (h *Holder) Reload(load func() (*Engine, error)) (*Engine, error) {
	e, err := load()
	if err != nil {
		return h.cur.Load(), err
	}
	h.cur.Store(e)
	return e, nil
}
