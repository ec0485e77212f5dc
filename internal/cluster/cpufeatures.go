package cluster

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// ParseFeatures splits a --cpu-features value ("avx2,sse4_2 bmi2") into
// sorted, de-duplicated, lower-case flag names.
func ParseFeatures(s string) []string {
	f := strings.FieldsFunc(strings.ToLower(s), func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
	slices.Sort(f)
	return slices.Compact(f)
}

// HostFeatures reads the CPU flags of the first processor in a
// /proc/cpuinfo-formatted reader.
func HostFeatures(cpuinfo io.Reader) ([]string, error) {
	sc := bufio.NewScanner(cpuinfo)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "flags" {
			return ParseFeatures(v), nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read cpuinfo: %w", err)
	}
	return nil, fmt.Errorf("cpuinfo has no flags line")
}

// Missing returns the required features the host lacks.
func Missing(host, required []string) []string {
	var out []string
	for _, f := range required {
		if _, found := slices.BinarySearch(host, f); !found {
			out = append(out, f)
		}
	}
	return out
}

// CheckHostFeatures refuses a host whose CPU lacks a pinned feature: a
// snapshot taken on a CPU with a feature cannot be restored on one without,
// so every node of a cluster must have every pinned feature.
func CheckHostFeatures(pinned string) error {
	req := ParseFeatures(pinned)
	if len(req) == 0 {
		return nil
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return fmt.Errorf("--cpu-features: %w", err)
	}
	defer f.Close()
	host, err := HostFeatures(f)
	if err != nil {
		return fmt.Errorf("--cpu-features: %w", err)
	}
	if miss := Missing(host, req); len(miss) > 0 {
		return fmt.Errorf("--cpu-features: this machine's CPU lacks %s, which the cluster pins; snapshots from other nodes could not be restored here, so it cannot join (run it on a CPU with them, or pin fewer features cluster-wide)", strings.Join(miss, ", "))
	}
	return nil
}
