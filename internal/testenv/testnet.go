package testenv

import (
	"net"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testnet"
)

// Internet is a test's own stand-in for the internet (see testnet.Internet),
// removed when the test ends; its methods fail the test instead of
// returning errors.
type Internet struct {
	*testnet.Internet
	t testing.TB
}

// Site is a server on the Internet.
type Site = testnet.Site

// StartInternet builds an Internet and removes it when the test ends.
func StartInternet(t testing.TB) *Internet {
	t.Helper()
	RequireRoot(t)
	in, err := testnet.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Close)
	return &Internet{Internet: in, t: t}
}

// AddSite starts a site that the given names resolve to (see
// testnet.Internet.AddSite).
func (in *Internet) AddSite(names ...string) *Site {
	in.t.Helper()
	s, err := in.Internet.AddSite(names...)
	if err != nil {
		in.t.Fatal(err)
	}
	return s
}

// Listen opens a listener inside the Internet's namespace.
func (in *Internet) Listen(network, addr string) net.Listener {
	in.t.Helper()
	ln, err := in.Internet.Listen(network, addr)
	if err != nil {
		in.t.Fatal(err)
	}
	return ln
}
