package applets

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// wgetDefaultTimeout is busybox's and GNU wget's default network timeout.
const wgetDefaultTimeout = 900 * time.Second

const wgetUsage = `usage: wget [-cqS] [--spider] [-O FILE] [-o LOGFILE] [--header STR]
	[--post-data STR | --post-file FILE] [-Y on/off]
	[--no-check-certificate] [-P DIR] [-U AGENT] [-T SEC] URL...

Retrieve files via HTTP or HTTPS

	--spider	Only check URL existence: $? is 0 if exists
	--header STR	Add STR (of form 'header: value') to headers
	--post-data STR	Send STR using POST method
	--post-file FILE	Send FILE using POST method
	--no-check-certificate	Don't validate the server's certificate
	-c		Continue retrieval of aborted transfer
	-q		Quiet
	-P DIR		Save to DIR (default .)
	-S    		Show server response
	-T SEC		Network read timeout is SEC seconds (default 900, 0: none)
	-O FILE		Save to FILE ('-' for stdout)
	-o LOGFILE	Log messages to FILE
	-U STR		Use STR for User-Agent header
	-Y on/off	Use proxy
	-t NUM		Accepted and ignored, as by busybox
`

// wgetOptions are busybox wget's options, plus -T.
type wgetOptions struct {
	cont, quiet, serverResponse, spider, insecure bool
	output, logFile, prefix, userAgent            string
	noProxy                                       bool
	timeout                                       time.Duration
	headers                                       []string
	postData                                      *string
	postFile                                      string
	urls                                          []string
}

// wgetOption describes one option: its long name, short letter (0: none)
// and whether it takes a value.
type wgetOption struct {
	long  string
	short byte
	value bool
	set   func(o *wgetOptions, v string) error
}

var wgetOptionTable = []wgetOption{
	{"continue", 'c', false, func(o *wgetOptions, _ string) error { o.cont = true; return nil }},
	{"quiet", 'q', false, func(o *wgetOptions, _ string) error { o.quiet = true; return nil }},
	{"server-response", 'S', false, func(o *wgetOptions, _ string) error { o.serverResponse = true; return nil }},
	{"output-document", 'O', true, func(o *wgetOptions, v string) error { o.output = v; return nil }},
	{"output-file", 'o', true, func(o *wgetOptions, v string) error { o.logFile = v; return nil }},
	{"directory-prefix", 'P', true, func(o *wgetOptions, v string) error { o.prefix = v; return nil }},
	{"user-agent", 'U', true, func(o *wgetOptions, v string) error { o.userAgent = v; return nil }},
	{"timeout", 'T', true, func(o *wgetOptions, v string) error {
		s, err := strconv.ParseFloat(v, 64)
		if err != nil || s < 0 || s > 1e9 {
			return fmt.Errorf("invalid timeout '%s': want seconds", v)
		}
		o.timeout = time.Duration(s * float64(time.Second))
		return nil
	}},
	{"proxy", 'Y', true, func(o *wgetOptions, v string) error {
		switch v {
		case "on":
			o.noProxy = false
		case "off":
			o.noProxy = true
		default:
			return fmt.Errorf("invalid proxy setting '%s': want on or off", v)
		}
		return nil
	}},
	{"tries", 't', true, func(*wgetOptions, string) error { return nil }},
	{"header", 0, true, func(o *wgetOptions, v string) error {
		if !strings.Contains(v, ":") {
			return fmt.Errorf("invalid header '%s': want 'Name: value'", v)
		}
		o.headers = append(o.headers, v)
		return nil
	}},
	{"post-data", 0, true, func(o *wgetOptions, v string) error { o.postData = &v; return nil }},
	{"post-file", 0, true, func(o *wgetOptions, v string) error { o.postFile = v; return nil }},
	{"spider", 0, false, func(o *wgetOptions, _ string) error { o.spider = true; return nil }},
	{"no-check-certificate", 0, false, func(o *wgetOptions, _ string) error { o.insecure = true; return nil }},
	{"no-verbose", 0, false, func(*wgetOptions, string) error { return nil }},
}

// parseWgetArgs parses options the way busybox does: short ones may be
// grouped and take their value attached or as the next argument (-qO- and
// -q -O - are the same), long ones as --name=value or --name value.
func parseWgetArgs(args []string) (*wgetOptions, error) {
	o := &wgetOptions{timeout: wgetDefaultTimeout}
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func(name string) (string, error) {
			if i+1 >= len(args) {
				return "", fmt.Errorf("option requires an argument: %s", name)
			}
			i++
			return args[i], nil
		}
		switch {
		case a == "--":
			o.urls = append(o.urls, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "--"):
			name, val, hasVal := strings.Cut(a[2:], "=")
			opt := findWgetOption(func(w wgetOption) bool { return w.long == name })
			if opt == nil {
				return nil, fmt.Errorf("unrecognized option '%s'", a)
			}
			if !opt.value && hasVal {
				return nil, fmt.Errorf("option '--%s' doesn't allow an argument", name)
			}
			if opt.value && !hasVal {
				v, err := next(a)
				if err != nil {
					return nil, err
				}
				val = v
			}
			if err := opt.set(o, val); err != nil {
				return nil, err
			}
		case strings.HasPrefix(a, "-") && a != "-":
			for j := 1; j < len(a); j++ {
				c := a[j]
				if c == 'n' { // -nv, -nc, ...: ignored, as by busybox
					break
				}
				opt := findWgetOption(func(w wgetOption) bool { return w.short == c })
				if opt == nil {
					return nil, fmt.Errorf("invalid option -- '%c'", c)
				}
				val := ""
				if opt.value {
					if j+1 < len(a) {
						val = a[j+1:]
					} else {
						v, err := next("-" + string(c))
						if err != nil {
							return nil, err
						}
						val = v
					}
					j = len(a)
				}
				if err := opt.set(o, val); err != nil {
					return nil, err
				}
			}
		default:
			o.urls = append(o.urls, a)
		}
	}
	if len(o.urls) == 0 {
		return nil, errors.New("missing URL")
	}
	if o.postData != nil && o.postFile != "" {
		return nil, errors.New("--post-data and --post-file exclude each other")
	}
	return o, nil
}

func findWgetOption(match func(wgetOption) bool) *wgetOption {
	for i := range wgetOptionTable {
		if match(wgetOptionTable[i]) {
			return &wgetOptionTable[i]
		}
	}
	return nil
}

// Wget retrieves URLs over HTTP or HTTPS like busybox wget, with a working
// -T: every connect, TLS handshake and read must make progress within it.
// It returns 0 on success and 1 on any error, as busybox does.
func Wget(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && args[0] == "--help" {
		fmt.Fprint(stdout, wgetUsage)
		return 0
	}
	o, err := parseWgetArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "wget: %v\n%s", err, wgetUsage)
		return 1
	}
	logw := stderr
	if o.logFile != "" {
		f, err := os.OpenFile(o.logFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
		if err != nil {
			fmt.Fprintf(stderr, "wget: can't open '%s': %v\n", o.logFile, unwrapPathErr(err))
			return 1
		}
		defer f.Close()
		logw = f
	}
	g := &getter{o: o, stdout: stdout, log: logw, client: o.client()}
	defer g.closeOutput()
	for _, u := range o.urls {
		if err := g.get(u); err != nil {
			fmt.Fprintf(stderr, "wget: %v\n", err)
			if logw != stderr {
				fmt.Fprintf(logw, "wget: %v\n", err)
			}
			return 1
		}
	}
	if err := g.closeOutput(); err != nil {
		fmt.Fprintf(stderr, "wget: %v\n", err)
		return 1
	}
	return 0
}

// client returns an HTTP client whose connections fail a read, write or
// connect that makes no progress for the timeout.
func (o *wgetOptions) client() *http.Client {
	dialer := &net.Dialer{Timeout: o.timeout}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil || o.timeout == 0 {
				return c, err
			}
			return &idleTimeoutConn{Conn: c, idle: o.timeout}, nil
		},
		TLSHandshakeTimeout: o.timeout,
		DisableKeepAlives:   true,
		DisableCompression:  true, // save what the server sends, as wget does
	}
	if !o.noProxy {
		tr.Proxy = http.ProxyFromEnvironment
	}
	if o.insecure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	return &http.Client{Transport: tr}
}

// idleTimeoutConn fails any read or write that waits longer than idle.
type idleTimeoutConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleTimeoutConn) Read(b []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.idle)); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *idleTimeoutConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.idle)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// getter fetches the URLs of one wget run; with -O FILE they all go to one
// file, opened once.
type getter struct {
	o      *wgetOptions
	stdout io.Writer
	log    io.Writer
	client *http.Client
	out    *os.File // the -O FILE, once opened
}

func (g *getter) logf(format string, args ...any) {
	if !g.o.quiet {
		fmt.Fprintf(g.log, format, args...)
	}
}

func (g *getter) get(rawURL string) error {
	full := rawURL
	if !strings.Contains(rawURL, "://") {
		full = "http://" + rawURL // wget host/path means http
	}
	u, err := url.Parse(full)
	if err != nil {
		return fmt.Errorf("bad URL '%s'", rawURL)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("unsupported scheme in '%s': this wget speaks http and https (busybox wget does ftp)", rawURL)
	}
	if u.Host == "" {
		return fmt.Errorf("bad URL '%s': no host", rawURL)
	}

	name, toStdout := g.outputName(u)
	var offset int64
	if g.o.cont && !toStdout && g.o.output == "" {
		if fi, err := os.Stat(name); err == nil && fi.Mode().IsRegular() {
			offset = fi.Size()
		}
	}

	req, err := g.request(u, offset)
	if err != nil {
		return err
	}
	g.logf("Connecting to %s\n", u.Host)
	resp, err := g.client.Do(req)
	if err != nil {
		return describeNetErr(u, err)
	}
	defer resp.Body.Close()
	if g.o.serverResponse {
		writeResponseHead(g.log, resp)
	}
	if offset > 0 && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		g.logf("'%s' is already complete\n", name)
		return nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("server returned error: %s %s", resp.Proto, resp.Status)
	}
	if g.o.spider {
		g.logf("remote file exists\n")
		return nil
	}

	var w io.Writer
	switch {
	case toStdout:
		g.logf("writing to stdout\n")
		w = g.stdout
	case g.o.output != "":
		if g.out == nil {
			if g.out, err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666); err != nil {
				return fmt.Errorf("can't open '%s': %v", name, unwrapPathErr(err))
			}
		}
		g.logf("saving to '%s'\n", name)
		w = g.out
	default:
		flag := os.O_WRONLY | os.O_CREATE | os.O_EXCL // never overwrite a file named after the URL
		if offset > 0 && resp.StatusCode == http.StatusPartialContent {
			flag = os.O_WRONLY | os.O_APPEND
		} else if g.o.cont {
			flag = os.O_WRONLY | os.O_CREATE | os.O_TRUNC // the server sends it whole
		}
		f, err := os.OpenFile(name, flag, 0o666)
		if err != nil {
			return fmt.Errorf("can't open '%s': %v", name, unwrapPathErr(err))
		}
		defer f.Close()
		g.logf("saving to '%s'\n", name)
		w = f
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return describeNetErr(u, err)
	}
	if !toStdout {
		g.logf("'%s' saved\n", name)
	}
	return nil
}

// outputName is where u's body goes: -O's file, or the last element of the
// URL's path (index.html for a directory) under -P's directory.
func (g *getter) outputName(u *url.URL) (name string, toStdout bool) {
	switch g.o.output {
	case "-":
		return "", true
	case "":
		name = path.Base(u.Path)
		if name == "/" || name == "." || strings.HasSuffix(u.Path, "/") {
			name = "index.html"
		}
		if g.o.prefix != "" {
			name = filepath.Join(g.o.prefix, name)
		}
		return name, false
	default:
		return g.o.output, false
	}
}

func (g *getter) request(u *url.URL, offset int64) (*http.Request, error) {
	method := http.MethodGet
	var body io.Reader
	if g.o.postData != nil {
		method, body = http.MethodPost, strings.NewReader(*g.o.postData)
	} else if g.o.postFile != "" {
		b, err := os.ReadFile(g.o.postFile)
		if err != nil {
			return nil, fmt.Errorf("can't read '%s': %v", g.o.postFile, unwrapPathErr(err))
		}
		method, body = http.MethodPost, bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("bad URL '%s': %v", u, err)
	}
	req.Header.Set("User-Agent", "Wget")
	if g.o.userAgent != "" {
		req.Header.Set("User-Agent", g.o.userAgent)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	for _, h := range g.o.headers {
		name, val, _ := strings.Cut(h, ":")
		name, val = strings.TrimSpace(name), strings.TrimSpace(val)
		if strings.EqualFold(name, "Host") {
			req.Host = val
			continue
		}
		req.Header.Set(name, val)
	}
	return req, nil
}

func (g *getter) closeOutput() error {
	if g.out == nil {
		return nil
	}
	f := g.out
	g.out = nil
	if err := f.Close(); err != nil {
		return fmt.Errorf("write '%s': %v", f.Name(), err)
	}
	return nil
}

// writeResponseHead prints the status line and headers, as wget -S does.
func writeResponseHead(w io.Writer, resp *http.Response) {
	fmt.Fprintf(w, "  %s %s\n", resp.Proto, resp.Status)
	names := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		for _, v := range resp.Header[k] {
			fmt.Fprintf(w, "  %s: %s\n", k, v)
		}
	}
}

// describeNetErr turns a transport error into wget's terse messages.
func describeNetErr(u *url.URL, err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("download timed out")
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Errorf("bad address '%s'", u.Hostname())
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return fmt.Errorf("can't connect to remote host (%s): %v", u.Host, opErr.Err)
	}
	return err
}

func unwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
