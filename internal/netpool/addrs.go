package netpool

import (
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// linkAddrs4 returns the IPv4 addresses of the host link with the given
// index. netlink.AddrList dumps every address on the host and filters
// them here, which made a health round's link checks O(N²) (0.47-0.64 ms a
// check with 300 sandbox links, 0.13 ms with 15); with strict checking
// (Linux 4.20) the kernel sends only the link's own (0.12-0.14 ms with
// 300). Older kernels send them all, which the filter below still sorts out.
func linkAddrs4(index int) ([]netip.Addr, error) {
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	unix.SetsockoptInt(s.GetFd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1) // an optimisation only
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}
	msg := nl.NewIfAddrmsg(unix.AF_INET)
	msg.Index = uint32(index)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, m := range msgs {
		am := nl.DeserializeIfAddrmsg(m)
		if int(am.Index) != index || am.Family != unix.AF_INET {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[am.Len():])
		if err != nil {
			return nil, err
		}
		for _, a := range attrs {
			if ip, ok := netip.AddrFromSlice(a.Value); ok && a.Attr.Type == unix.IFA_LOCAL {
				out = append(out, ip)
			}
		}
	}
	return out, nil
}
