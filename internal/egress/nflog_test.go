package egress

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// nlattr encodes one netlink attribute, padded to 4 bytes.
func nlattr(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// TestParseLoggedPacket reads the sandbox and the refused destination out
// of an NFLOG message's attributes, as the kernel sends them.
func TestParseLoggedPacket(t *testing.T) {
	ip := make([]byte, 24+4) // IPv4 header with 4 bytes of options, then the TCP ports
	ip[0] = 0x46
	ip[9] = 6 // TCP
	copy(ip[12:], []byte{169, 254, 1, 2})
	copy(ip[16:], []byte{10, 0, 0, 1})
	binary.BigEndian.PutUint16(ip[24:], 40000)
	binary.BigEndian.PutUint16(ip[26:], 80)
	attrs := append(nlattr(1, []byte{0x08, 0x00, 3, 0}), nlattr(nfulaPayload, ip)...)
	got, ok := parseLoggedPacket(attrs)
	want := refusedConn{src: netip.MustParseAddr("169.254.1.2"), dst: netip.MustParseAddrPort("10.0.0.1:80")}
	if !ok || got != want {
		t.Fatalf("parsed %+v %v, want %+v", got, ok, want)
	}
	ip[9] = 17 // UDP: not a connection
	if _, ok := parseLoggedPacket(append(nlattr(1, []byte{0x08, 0x00, 3, 0}), nlattr(nfulaPayload, ip)...)); ok {
		t.Fatal("a UDP packet was taken for a TCP connection")
	}
	if _, ok := parseLoggedPacket(nlattr(nfulaPayload, ip[:10])); ok {
		t.Fatal("a truncated packet was parsed")
	}
}
