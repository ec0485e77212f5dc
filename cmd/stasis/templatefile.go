package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	stasis "github.com/stasis-sandbox/stasis"
)

// templateFileHelp documents the file `stasis template create -f` reads.
const templateFileHelp = `The file is YAML (or JSON):

  name: web                    # required, unique
  from: stasis/minimal         # required: an OCI image (e.g. docker.io/library/python:3.12-slim)
                               # or a built-in template (stasis/minimal, stasis/base)
  vcpu: 1                      # optional sizes; the server's defaults otherwise
  memory_mib: 512
  disk_mib: 1024
  steps:                       # run in order; each has exactly one of:
    - run: mkdir -p /srv && echo hello > /srv/index.html
    - env: {key: GREETING, value: hi}    # or: env: GREETING=hi
    - workdir: /srv
    - user: {name: app, sudo: true}      # or: user: app
  start_cmd: httpd -f -p 8080 -h /srv    # keeps running in every sandbox made from the template
  ready_cmd: wget -q -O - http://127.0.0.1:8080/index.html   # retried until it exits 0`

// templateFile is the YAML form of a template.
type templateFile struct {
	Name      string     `yaml:"name"`
	From      string     `yaml:"from"`
	VCPU      int        `yaml:"vcpu"`
	MemoryMiB int        `yaml:"memory_mib"`
	DiskMiB   int        `yaml:"disk_mib"`
	Steps     []fileStep `yaml:"steps"`
	StartCmd  string     `yaml:"start_cmd"`
	ReadyCmd  string     `yaml:"ready_cmd"`
}

type fileStep struct{ step stasis.BuildStep }

// yamlErrText makes the YAML decoder's errors read better.
var yamlErrText = strings.NewReplacer("unmarshal errors:\n  ", "", "[]main.fileStep", "a list of steps",
	"!!map", "a mapping", "!!seq", "a list", "!!str", "the string")

// parseTemplateFile reads a template file into a spec. Unknown fields are
// errors, so typos do not go unnoticed.
func parseTemplateFile(r io.Reader) (stasis.TemplateSpec, error) {
	data, err := io.ReadAll(io.LimitReader(r, 4<<20))
	if err != nil {
		return stasis.TemplateSpec{}, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return stasis.TemplateSpec{}, errors.New("the file is empty")
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		return stasis.TemplateSpec{}, errors.New(yamlErrText.Replace(strings.TrimPrefix(err.Error(), "yaml: ")))
	}
	if err := checkFields(&doc, templateFileFields()); err != nil {
		return stasis.TemplateSpec{}, err
	}
	var f templateFile
	if err := doc.Decode(&f); err != nil {
		return stasis.TemplateSpec{}, errors.New(yamlErrText.Replace(strings.TrimPrefix(err.Error(), "yaml: ")))
	}
	spec := stasis.TemplateSpec{
		Name: strings.TrimSpace(f.Name), From: strings.TrimSpace(f.From),
		VCPU: f.VCPU, MemoryMiB: f.MemoryMiB, DiskMiB: f.DiskMiB,
		StartCmd: strings.TrimSpace(f.StartCmd), ReadyCmd: strings.TrimSpace(f.ReadyCmd),
	}
	for _, s := range f.Steps {
		spec.Steps = append(spec.Steps, s.step)
	}
	if spec.From == "" {
		return spec, errors.New(`"from" is required: an OCI image reference or a built-in template such as stasis/minimal`)
	}
	if spec.VCPU < 0 || spec.MemoryMiB < 0 || spec.DiskMiB < 0 {
		return spec, errors.New("vcpu, memory_mib and disk_mib must not be negative")
	}
	return spec, nil
}

// templateFileFields lists the keys a template file may have, in the
// order templateFile declares them.
func templateFileFields() []string {
	t := reflect.TypeFor[templateFile]()
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		names = append(names, name)
	}
	return names
}

// checkFields refuses a top-level key that is not one of valid, naming the
// valid ones (the decoder's own message names Go types instead).
func checkFields(doc *yaml.Node, valid []string) error {
	n := doc
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return nodeErr(n, "a template file is a mapping of fields (%s)", strings.Join(valid, ", "))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := n.Content[i]
		if !slices.Contains(valid, key.Value) {
			return nodeErr(key, "unknown field %q; valid fields are: %s", key.Value, strings.Join(valid, ", "))
		}
	}
	return nil
}

func nodeErr(n *yaml.Node, format string, args ...any) error {
	return fmt.Errorf("line %d: %s", n.Line, fmt.Sprintf(format, args...))
}

func scalar(n *yaml.Node, what string) (string, error) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", nodeErr(n, "%s must be a string", what)
	}
	return n.Value, nil
}

// UnmarshalYAML reads one step: a mapping with exactly one of run, env,
// workdir and user.
func (s *fileStep) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
		return nodeErr(n, "a step must have exactly one of run, env, workdir, user (e.g. `- run: make`)")
	}
	key, val := n.Content[0].Value, n.Content[1]
	switch key {
	case "run":
		cmd, err := scalar(val, "run")
		if err != nil {
			return err
		}
		if strings.TrimSpace(cmd) == "" {
			return nodeErr(val, "empty run command")
		}
		s.step = stasis.RunStep(strings.TrimRight(cmd, "\n"))
	case "workdir":
		dir, err := scalar(val, "workdir")
		if err != nil {
			return err
		}
		if !strings.HasPrefix(dir, "/") {
			return nodeErr(val, "workdir must be an absolute path, got %q", dir)
		}
		s.step = stasis.WorkdirStep(dir)
	case "env":
		if val.Kind == yaml.ScalarNode {
			k, v, ok := strings.Cut(val.Value, "=")
			if !ok || k == "" {
				return nodeErr(val, "env wants KEY=VALUE or {key: KEY, value: VALUE}, got %q", val.Value)
			}
			s.step = stasis.EnvStep(k, v)
			return nil
		}
		var e struct {
			Key   *string `yaml:"key"`
			Value *string `yaml:"value"`
		}
		if err := decodeStrict(val, &e); err != nil || e.Key == nil || *e.Key == "" {
			return nodeErr(val, "env wants KEY=VALUE or {key: KEY, value: VALUE}")
		}
		v := ""
		if e.Value != nil {
			v = *e.Value
		}
		s.step = stasis.EnvStep(*e.Key, v)
	case "user":
		if val.Kind == yaml.ScalarNode {
			if val.Value == "" {
				return nodeErr(val, "empty user name")
			}
			s.step = stasis.UserStep(val.Value, false)
			return nil
		}
		var u struct {
			Name string `yaml:"name"`
			Sudo bool   `yaml:"sudo"`
		}
		if err := decodeStrict(val, &u); err != nil || u.Name == "" {
			return nodeErr(val, "user wants NAME or {name: NAME, sudo: true|false}")
		}
		s.step = stasis.UserStep(u.Name, u.Sudo)
	default:
		return nodeErr(n, "unknown step %q: want run, env, workdir or user", key)
	}
	return nil
}

// decodeStrict decodes a mapping node, refusing unknown keys.
func decodeStrict(n *yaml.Node, out any) error {
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(out)
}
