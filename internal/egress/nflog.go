package egress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// The host's firewall refuses TCP connections to the always-blocked ranges
// and the host's own addresses itself, before the proxy sees them; it
// copies the first packet of each to an NFLOG group that this reader
// listens on, so that they are logged too.

// Netlink constants of nfnetlink_log (linux/netfilter/nfnetlink_log.h).
const (
	nfnlSubsysULOG   = 4
	nfulnlMsgPacket  = 0
	nfulnlMsgConfig  = 1
	nfulaPayload     = 9
	nfulaCfgCmd      = 1
	nfulaCfgMode     = 2
	nfulaCfgQThresh  = 4
	nfulnlCfgCmdBind = 1
	nfulnlCopyPacket = 2
	nflogCopyBytes   = 64 // the IPv4 and TCP headers are all that is read
)

// nflogReader receives the packets the firewall logs to one NFLOG group.
type nflogReader struct {
	fd    int
	group uint16
}

// openNFLOG binds the first free NFLOG group from first on (another
// process may hold one: each stasisd needs its own).
func openNFLOG(first uint16) (*nflogReader, error) {
	var lastErr error
	for g := first; g < first+64 && g != 0; g++ {
		r, err := bindNFLOG(g)
		if err == nil {
			return r, nil
		}
		lastErr = err
		if !errors.Is(err, unix.EBUSY) {
			break
		}
	}
	return nil, fmt.Errorf("egress: binding an NFLOG group: %w", lastErr)
}

func bindNFLOG(group uint16) (*nflogReader, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	r := &nflogReader{fd: fd, group: group}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, nflogCopyBytes)
	mode[4] = nfulnlCopyPacket
	qthresh := binary.BigEndian.AppendUint32(nil, 1) // deliver each packet at once
	for _, attr := range []struct {
		typ  uint16
		data []byte
	}{{nfulaCfgCmd, []byte{nfulnlCfgCmdBind}}, {nfulaCfgMode, mode}, {nfulaCfgQThresh, qthresh}} {
		if err := r.config(attr.typ, attr.data); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	// Reads block at most a quarter second, so the server's end is noticed.
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 250000})
	return r, nil
}

// config sends one configuration attribute for the group and waits for
// the kernel's acknowledgement.
func (r *nflogReader) config(typ uint16, data []byte) error {
	attr := make([]byte, 4+len(data))
	binary.NativeEndian.PutUint16(attr[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(attr[2:], typ)
	copy(attr[4:], data)
	for len(attr)%4 != 0 {
		attr = append(attr, 0)
	}
	msg := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(attr))
	msg = append(msg, attr...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], nfnlSubsysULOG<<8|nfulnlMsgConfig)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1) // sequence
	// nfgenmsg: family AF_UNSPEC, version 0, the group (big-endian).
	msg[unix.NLMSG_HDRLEN+1] = unix.NFNETLINK_V0
	binary.BigEndian.PutUint16(msg[unix.NLMSG_HDRLEN+2:], r.group)
	if err := unix.Sendto(r.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(r.fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
				return syscall.Errno(-e)
			}
		}
	}
	return nil
}

// refusedConn is one connection the firewall refused.
type refusedConn struct {
	src netip.Addr
	dst netip.AddrPort
}

// read returns the next logged TCP connections, or none after a quarter
// second without any.
func (r *nflogReader) read(buf []byte) ([]refusedConn, error) {
	n, _, err := unix.Recvfrom(r.fd, buf, 0)
	if err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return nil, nil
		}
		return nil, err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return nil, nil // a truncated batch: drop it
	}
	var out []refusedConn
	for _, m := range msgs {
		if m.Header.Type != nfnlSubsysULOG<<8|nfulnlMsgPacket || len(m.Data) < 4 {
			continue
		}
		if c, ok := parseLoggedPacket(m.Data[4:]); ok {
			out = append(out, c)
		}
	}
	return out, nil
}

// parseLoggedPacket reads the source and TCP destination of the IPv4
// packet in a logged message's attributes.
func parseLoggedPacket(attrs []byte) (refusedConn, bool) {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:]))
		typ := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff
		if l < 4 || l > len(attrs) {
			return refusedConn{}, false
		}
		if typ == nfulaPayload {
			return parseIPv4TCP(attrs[4:l])
		}
		attrs = attrs[min(len(attrs), (l+3)&^3):]
	}
	return refusedConn{}, false
}

func parseIPv4TCP(p []byte) (refusedConn, bool) {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP {
		return refusedConn{}, false
	}
	ihl := int(p[0]&0x0f) * 4
	if len(p) < ihl+4 {
		return refusedConn{}, false
	}
	src := netip.AddrFrom4([4]byte(p[12:16]))
	dst := netip.AddrFrom4([4]byte(p[16:20]))
	port := binary.BigEndian.Uint16(p[ihl+2:])
	return refusedConn{src: src, dst: netip.AddrPortFrom(dst, port)}, true
}

func (r *nflogReader) Close() error { return unix.Close(r.fd) }
