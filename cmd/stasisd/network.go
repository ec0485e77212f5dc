package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"flag"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/stasis-sandbox/stasis/internal/api"
	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/firewall"
	"github.com/stasis-sandbox/stasis/internal/inject"
	"github.com/stasis-sandbox/stasis/internal/netlog"
	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/preview"
	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/secrets"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// netFlags are the serve flags of sandbox networking.
type netFlags struct {
	egress        string
	dnsUpstreams  listFlag
	resolvConf    string
	previewDomain string
	secretsKey    string
	egressCA      string
}

func (f *netFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.egress, "egress", "allow", "verdict for a sandbox connection no rule of the sandbox matches: allow or deny")
	fs.Var(&f.dnsUpstreams, "dns-upstream", "name server (IP:PORT) sandboxes' DNS queries are forwarded to; repeatable (default: the host's, from --resolv-conf)")
	fs.StringVar(&f.resolvConf, "resolv-conf", "/etc/resolv.conf", "where the host's name servers are read from when no --dns-upstream is given")
	fs.StringVar(&f.secretsKey, "secrets-key-file", "", "AES-256 key that secret values are encrypted under, created 0600 at first start (default DATA_DIR/secrets.key; back it up: without it stored secrets are lost)")
	fs.StringVar(&f.egressCA, "egress-ca-file", "", "PEM CA certificates trusted, besides the host's, when secret injection connects to upstream hosts over TLS")
	fs.StringVar(&f.previewDomain, "preview-domain", "sandbox.localhost", "preview URLs are http://PORT-ID.DOMAIN on the API listener")
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// egressRun is the running egress path: proxy, resolver, log writer and
// their firewall rules.
type egressRun struct {
	srv    *egress.Server
	fw     *firewall.Egress
	log    *netlog.Writer
	cancel context.CancelFunc
	logger *slog.Logger
}

// startEgress starts the resolver, the proxy and the network log writer,
// and redirects sandbox traffic to them.
func startEgress(ctx context.Context, f netFlags, st store.Store, pool *netpool.Pool, ifPrefix string,
	policy func(context.Context, string) (*egress.Policy, error), inj *inject.Interceptor, log *slog.Logger) (*egressRun, error) {
	var defaultAllow bool
	switch f.egress {
	case "allow":
		defaultAllow = true
	case "deny":
	default:
		return nil, fmt.Errorf("--egress must be allow or deny, not %q", f.egress)
	}
	upstreams := []string(f.dnsUpstreams)
	for _, u := range upstreams {
		if _, err := netip.ParseAddrPort(u); err != nil {
			return nil, fmt.Errorf("--dns-upstream %q: want IP:PORT", u)
		}
	}
	if len(upstreams) == 0 {
		var err error
		if upstreams, err = egress.UpstreamsFromResolvConf(f.resolvConf); err != nil {
			return nil, fmt.Errorf("sandbox DNS: %w (or pass --dns-upstream)", err)
		}
	}
	wctx, cancel := context.WithCancel(context.Background())
	nl := netlog.New(st, log)
	go nl.Run(wctx)
	srv, err := egress.Start(egress.Config{
		Identify: func(local, remote netip.Addr) (string, bool) {
			l, ok := pool.LookupAddr(remote)
			if !ok || local.IsValid() && l.HostAddr != local {
				return "", false
			}
			return l.ID, true
		},
		Policy:       policy,
		DefaultAllow: defaultAllow,
		Upstreams:    upstreams,
		Log:          nl,
		Intercept:    inj,
		Alive:        func(id string) bool { _, ok := pool.Lookup(id); return ok },
		NFLOGGroup:   nflogGroup(ifPrefix),
		Logger:       log,
	})
	if err != nil {
		cancel()
		return nil, err
	}
	fw := firewall.NewEgress(ifPrefix)
	err = fw.Install(ctx, srv.ProxyPort(), srv.DNSPort(), egress.AlwaysBlocked(), srv.NFLOGGroup())
	if err != nil && srv.NFLOGGroup() != 0 {
		// A kernel without the NFLOG target: refuse without logging.
		log.Warn("sandbox egress firewall: connections it refuses will not be logged", "err", err)
		err = fw.Install(ctx, srv.ProxyPort(), srv.DNSPort(), egress.AlwaysBlocked(), 0)
	}
	if err != nil {
		srv.Close()
		cancel()
		return nil, fmt.Errorf("sandbox egress firewall: %w", err)
	}
	log.Info("sandbox egress ready", "default", f.egress, "dns_upstreams", strings.Join(upstreams, ","),
		"proxy", net.JoinHostPort("0.0.0.0", fmt.Sprint(srv.ProxyPort())))
	return &egressRun{srv: srv, fw: fw, log: nl, cancel: cancel, logger: log}, nil
}

// nflogGroup is where a server's search for a free NFLOG group starts:
// derived from its interface prefix, so servers side by side seldom try
// the same ones.
func nflogGroup(ifPrefix string) uint16 {
	h := fnv.New32a()
	h.Write([]byte(ifPrefix))
	return uint16(1000 + h.Sum32()%60000)
}

// stop stops the proxy and resolver and writes the last log rows. The
// firewall's redirection goes too when no sandbox of this server is left
// running (the next start rewrites it anyway).
func (e *egressRun) stop(ctx context.Context, pool *netpool.Pool) {
	e.srv.Close()
	e.cancel()
	e.log.Wait()
	if len(pool.List()) == 0 {
		if err := e.fw.Remove(ctx); err != nil {
			e.logger.Warn("removing the egress firewall rules", "err", err)
		}
	}
}

// openSecrets loads (creating it at first start) the secrets key and
// returns the secrets service.
func openSecrets(f netFlags, dataDir string, st store.Store) (*secrets.Service, error) {
	path := f.secretsKey
	if path == "" {
		path = filepath.Join(dataDir, "secrets.key")
	}
	key, err := secrets.LoadOrCreateKey(path)
	if err != nil {
		return nil, err
	}
	return secrets.New(st, key)
}

// newInjector loads (creating it at first start) the egress CA and returns
// the interceptor that injects secrets, and the CA's PEM for sandboxes.
func newInjector(f netFlags, dataDir string, sec *secrets.Service, log *slog.Logger) (*inject.Interceptor, []byte, error) {
	ca, err := inject.LoadOrCreateCA(dataDir)
	if err != nil {
		return nil, nil, err
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if f.egressCA != "" {
		pem, err := os.ReadFile(f.egressCA)
		if err != nil {
			return nil, nil, fmt.Errorf("--egress-ca-file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--egress-ca-file %s: no PEM certificate in it", f.egressCA)
		}
	}
	return inject.New(inject.Config{Secrets: sec, CA: ca, Roots: roots, Logger: log}), ca.PEM(), nil
}

// previewRouter puts the preview router for --preview-domain in front of
// the API: {port}-{id}.DOMAIN hosts go to the sandbox, the rest to the API.
func previewRouter(f netFlags, svc *sandbox.Service, pool *netpool.Pool, nodeKey []byte, apiSrv *api.Server, log *slog.Logger) *preview.Router {
	m := hmac.New(sha256.New, nodeKey)
	m.Write([]byte("stasis-preview-key"))
	rt := preview.New(preview.Config{
		Domain:    f.previewDomain,
		Sandboxes: svc,
		Addr: func(id string) (netip.Addr, bool) {
			l, ok := pool.Lookup(id)
			if !ok || !l.Subnet.IsValid() {
				return netip.Addr{}, false
			}
			return l.SandboxAddr, true
		},
		Key:    m.Sum(nil),
		Next:   apiSrv,
		Logger: log,
	})
	apiSrv.SetPreview(rt)
	return rt
}
