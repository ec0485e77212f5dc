package egress

import (
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Bounds of the resolver's answer cache: answers live for their smallest
// TTL, at most maxAnswerTTL; negative answers (no such name, no record of
// the type) for the SOA's negative TTL, at most maxNegativeTTL.
const (
	maxAnswerTTL    = 5 * time.Minute
	maxNegativeTTL  = time.Minute
	maxCacheAnswers = 4096
)

// answerCache holds upstream answers to sandboxes' queries, shared by all
// sandboxes (an answer is what the upstream says, whoever asked). Each
// sandbox's lookups are still recorded on every answer, cached or not.
type answerCache struct {
	max int
	now func() time.Time

	mu sync.Mutex
	m  map[cacheKey]cachedAnswer
}

type cacheKey struct {
	name          string // lower case
	qtype, qclass uint16
	edns          bool // answers to EDNS queries carry an OPT record
}

type cachedAnswer struct {
	msg     *dns.Msg
	stored  time.Time
	expires time.Time
}

func newAnswerCache(max int, now func() time.Time) *answerCache {
	return &answerCache{max: max, now: now, m: map[cacheKey]cachedAnswer{}}
}

func keyOf(req *dns.Msg) cacheKey {
	q := req.Question[0]
	return cacheKey{name: strings.ToLower(q.Name), qtype: q.Qtype, qclass: q.Qclass, edns: req.IsEdns0() != nil}
}

// get returns a copy of the cached answer to req, its TTLs lowered by the
// time it has been held, with req's ID and question; nil if none is fresh.
func (c *answerCache) get(req *dns.Msg) *dns.Msg {
	k := keyOf(req)
	now := c.now()
	c.mu.Lock()
	e, ok := c.m[k]
	if ok && !now.Before(e.expires) {
		delete(c.m, k)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return nil
	}
	m := e.msg.Copy()
	m.Id = req.Id
	m.Question = req.Question
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, rrs := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range rrs {
			if h := rr.Header(); h.Rrtype != dns.TypeOPT {
				h.Ttl -= min(age, h.Ttl)
			}
		}
	}
	return m
}

// put stores resp, the upstream's answer to req, if it may be cached.
func (c *answerCache) put(req, resp *dns.Msg) {
	ttl, ok := cacheTTL(resp)
	if !ok {
		return
	}
	now := c.now()
	k := keyOf(req)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.m[k]; !exists && len(c.m) >= c.max {
		for n, e := range c.m {
			if !now.Before(e.expires) {
				delete(c.m, n)
			}
		}
		// Still full: drop an arbitrary eighth (map order is random).
		for n := range c.m {
			if len(c.m) < c.max-c.max/8 {
				break
			}
			delete(c.m, n)
		}
	}
	c.m[k] = cachedAnswer{msg: resp.Copy(), stored: now, expires: now.Add(ttl)}
}

// cacheTTL is how long resp may be cached: its records' smallest TTL for an
// answer, the SOA's negative TTL for "no such name" or "no record"; false
// for failures, truncated answers and anything with a zero TTL.
func cacheTTL(resp *dns.Msg) (time.Duration, bool) {
	if resp.Truncated || (resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError) {
		return 0, false
	}
	if resp.Rcode == dns.RcodeSuccess && len(resp.Answer) > 0 {
		ttl := maxAnswerTTL
		for _, rr := range resp.Answer {
			ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
		}
		return ttl, ttl > 0
	}
	// Negative: RFC 2308, the smaller of the SOA's TTL and its MINIMUM.
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl := min(maxNegativeTTL, time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second)
			return ttl, ttl > 0
		}
	}
	return 0, false
}
