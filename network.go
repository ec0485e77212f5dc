package stasis

import (
	"context"
	"fmt"
	"iter"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// DefaultPreviewDomain is stasisd's default --preview-domain: browsers
// resolve *.localhost to the machine itself, so preview URLs work with no
// DNS set up.
const DefaultPreviewDomain = "sandbox.localhost"

// Ports a preview URL may name.
const (
	MinPreviewPort = 1024
	MaxPreviewPort = 65535
)

// WithPreviewDomain sets the preview domain of the server (its
// --preview-domain) for PreviewURL.
func WithPreviewDomain(domain string) Option { return func(o *options) { o.previewDomain = domain } }

// Network is a sandbox's egress rules. AllowOut takes CIDRs and domain
// names ("*.example.com": every name below example.com, not the apex);
// DenyOut takes CIDRs. Allow wins where they overlap; with neither, the
// server's default (--egress) applies. Private, link-local and loopback
// addresses, the host and other sandboxes are never reachable.
type Network struct {
	AllowOut []string
	DenyOut  []string
}

type networkWire struct {
	AllowOut []string `json:"allow_out"`
	DenyOut  []string `json:"deny_out"`
}

func (n Network) wire() *networkWire {
	w := &networkWire{AllowOut: n.AllowOut, DenyOut: n.DenyOut}
	if w.AllowOut == nil {
		w.AllowOut = []string{}
	}
	if w.DenyOut == nil {
		w.DenyOut = []string{}
	}
	return w
}

// Network log verdicts.
const (
	VerdictAllowed = "allowed"
	VerdictBlocked = "blocked" // by a rule, or because the address is never reachable
	VerdictFailed  = "failed"  // allowed, but the destination could not be reached
)

// NetworkEvent is one row of a sandbox's network log: an outbound
// connection (Kind "connection").
type NetworkEvent struct {
	Kind      string    `json:"kind"`
	ID        int64     `json:"id"`
	Time      time.Time `json:"ts"`
	Host      string    `json:"host"` // TLS SNI, HTTP Host, or the DNS name used; else the address
	DstIP     string    `json:"dst_ip"`
	DstPort   int       `json:"dst_port"`
	Verdict   string    `json:"verdict"`
	MatchRule string    `json:"match_rule"` // e.g. "allow_out:*.github.com", "deny_out:0.0.0.0/0", "default"
	BytesSent int64     `json:"bytes_sent"`
	BytesRecv int64     `json:"bytes_recv"`
}

// NetworkLogOptions selects rows of the network log. Zero fields do not
// filter.
type NetworkLogOptions struct {
	Limit   int       // rows per page, 1-200 (default 50)
	Before  time.Time // rows strictly older
	Since   time.Time // rows at or after
	Verdict string    // VerdictAllowed, VerdictBlocked or VerdictFailed
	// Cursor continues after a page (NetworkLogPage.NextCursor).
	Cursor string
}

// NetworkLogPage is one page of the network log, newest first.
type NetworkLogPage struct {
	Events     []NetworkEvent `json:"data"`
	NextCursor string         `json:"next_cursor"`
	HasMore    bool           `json:"has_more"`
}

// NetworkLogByID returns one page of a sandbox's network log.
func (c *Client) NetworkLogByID(ctx context.Context, id string, opts NetworkLogOptions) (*NetworkLogPage, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	q := url.Values{}
	if opts.Limit != 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	switch {
	case opts.Cursor != "":
		q.Set("before", opts.Cursor)
	case !opts.Before.IsZero():
		q.Set("before", opts.Before.UTC().Format(time.RFC3339Nano))
	}
	if !opts.Since.IsZero() {
		q.Set("since", opts.Since.UTC().Format(time.RFC3339Nano))
	}
	if opts.Verdict != "" {
		q.Set("verdict", opts.Verdict)
	}
	var wire struct {
		Data       []NetworkEvent `json:"data"`
		NextCursor *string        `json:"next_cursor"`
		HasMore    bool           `json:"has_more"`
	}
	if err := c.doJSON(ctx, call{method: http.MethodGet, path: "/sandboxes/" + url.PathEscape(id) + "/network", query: q}, &wire); err != nil {
		return nil, err
	}
	p := &NetworkLogPage{Events: wire.Data, HasMore: wire.HasMore}
	if p.Events == nil {
		p.Events = []NetworkEvent{}
	}
	if wire.NextCursor != nil {
		p.NextCursor = *wire.NextCursor
	}
	return p, nil
}

// NetworkLog returns one page of the sandbox's network log: its outbound
// connections, newest first.
func (s *Sandbox) NetworkLog(ctx context.Context, opts NetworkLogOptions) (*NetworkLogPage, error) {
	return s.c.NetworkLogByID(ctx, s.ID, opts)
}

// NetworkLogPages iterates over the pages of the sandbox's network log,
// newest first, until the last page or an error (yielded last).
func (s *Sandbox) NetworkLogPages(ctx context.Context, opts NetworkLogOptions) iter.Seq2[*NetworkLogPage, error] {
	return s.c.NetworkLogPages(ctx, s.ID, opts)
}

// NetworkLogPages is NetworkLogPages for a sandbox id.
func (c *Client) NetworkLogPages(ctx context.Context, id string, opts NetworkLogOptions) iter.Seq2[*NetworkLogPage, error] {
	return func(yield func(*NetworkLogPage, error) bool) {
		for {
			p, err := c.NetworkLogByID(ctx, id, opts)
			if err != nil {
				yield(nil, err)
				return
			}
			if !yield(p, nil) || !p.HasMore || p.NextCursor == "" {
				return
			}
			opts.Cursor = p.NextCursor
		}
	}
}

// PreviewURL is the URL at which the server listening on port inside the
// sandbox is reachable: http(s)://PORT-ID.DOMAIN[:port of the base URL]/.
// A request to it resumes a paused sandbox. It makes no request.
func (s *Sandbox) PreviewURL(port int) (string, error) {
	return s.c.PreviewURL(s.ID, port)
}

// PreviewURL is PreviewURL for a sandbox id.
func (c *Client) PreviewURL(id string, port int) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	if port < MinPreviewPort || port > MaxPreviewPort {
		return "", errorf(ErrValidation, "invalid preview port %d: must be from %d to %d", port, MinPreviewPort, MaxPreviewPort)
	}
	u, err := url.Parse(c.baseURL)
	if err != nil {
		return "", err
	}
	host := fmt.Sprintf("%d-%s.%s", port, id, c.previewDomain)
	if p := u.Port(); p != "" {
		host = net.JoinHostPort(host, p)
	}
	return u.Scheme + "://" + host + "/", nil
}

// PreviewLink returns a one-time link that opens the preview of port in a
// browser and leaves a cookie there, for sandboxes whose previews are
// private (CreateOptions.PrivatePreview). It expires after a few minutes.
func (c *Client) PreviewLink(ctx context.Context, id string, port int) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	var out struct {
		Link string `json:"link"`
	}
	err := c.doJSON(ctx, call{method: http.MethodPost, path: "/sandboxes/" + url.PathEscape(id) + "/preview-link",
		json: map[string]int{"port": port}}, &out)
	return out.Link, err
}
