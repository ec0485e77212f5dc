package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	stasis "github.com/stasis-sandbox/stasis"
)

// idResolver turns what the user typed for a sandbox into its full id: the
// id itself, or a prefix that only one of the team's sandboxes has (as
// docker does). It lists the sandboxes once, however many ids it resolves.
type idResolver struct {
	c *stasis.Client

	once sync.Once
	ids  []string
	err  error
}

func newIDResolver(c *stasis.Client) *idResolver { return &idResolver{c: c} }

// resolve returns the full id for arg. An unknown id or prefix is an error
// that matches stasis.ErrNotFound; a prefix of several ids is an error
// listing them.
func (r *idResolver) resolve(ctx context.Context, arg string) (string, error) {
	if arg == "" {
		return "", fmt.Errorf("empty sandbox id")
	}
	r.once.Do(func() {
		list, err := r.c.List(ctx, nil)
		if err != nil {
			r.err = err
			return
		}
		for _, s := range list {
			r.ids = append(r.ids, s.ID)
		}
		sort.Strings(r.ids)
	})
	if r.err != nil {
		return "", r.err
	}
	var matches []string
	for _, id := range r.ids {
		if id == arg {
			return id, nil
		}
		if strings.HasPrefix(id, arg) {
			matches = append(matches, id)
		}
	}
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("%w", stasis.ErrNotFound)
	case 1:
		return matches[0], nil
	}
	const show = 5
	list := strings.Join(matches[:min(len(matches), show)], ", ")
	if len(matches) > show {
		list += fmt.Sprintf(" and %d more", len(matches)-show)
	}
	return "", fmt.Errorf("sandbox id prefix %q is ambiguous: it matches %s (type more of the id)", arg, list)
}

// resolveOne connects a client and resolves one sandbox argument, printing
// the error and returning a non-zero exit status on failure.
func (a *app) resolveOne(ctx context.Context, arg string) (*stasis.Client, string, int) {
	c, err := a.client()
	if err != nil {
		return nil, "", a.fail(err, "")
	}
	id, err := newIDResolver(c).resolve(ctx, arg)
	if err != nil {
		return nil, "", a.fail(err, arg)
	}
	return c, id, 0
}
