package cluster

import (
	"os"
	"slices"
	"strings"
	"testing"
)

const cpuinfo = `processor	: 0
vendor_id	: GenuineIntel
flags		: fpu sse sse2 avx avx2 sse4_2
bugs		: spectre_v1

processor	: 1
flags		: fpu sse sse2 avx avx2 sse4_2
`

func TestMissingFeatures(t *testing.T) {
	host, err := HostFeatures(strings.NewReader(cpuinfo))
	if err != nil {
		t.Fatal(err)
	}
	if got := Missing(host, ParseFeatures("AVX2, sse4_2 avx2")); len(got) != 0 {
		t.Errorf("Missing = %v, want none", got)
	}
	if got := Missing(host, ParseFeatures("avx512f,avx2,amx_tile")); !slices.Equal(got, []string{"amx_tile", "avx512f"}) {
		t.Errorf("Missing = %v, want [amx_tile avx512f]", got)
	}
	if _, err := HostFeatures(strings.NewReader("processor: 0\n")); err == nil {
		t.Error("cpuinfo without flags: want an error")
	}
}

func TestCheckHostFeaturesOnThisMachine(t *testing.T) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	host, err := HostFeatures(strings.NewReader(string(b)))
	if err != nil || len(host) == 0 {
		t.Fatalf("this machine's flags: %v, %v", host, err)
	}
	if err := CheckHostFeatures(strings.Join(host[:min(3, len(host))], ",")); err != nil {
		t.Errorf("pinning features this CPU has: %v", err)
	}
	if err := CheckHostFeatures(""); err != nil {
		t.Errorf("no pin: %v", err)
	}
	err = CheckHostFeatures(host[0] + ",no_such_feature_x")
	if err == nil || !strings.Contains(err.Error(), "lacks no_such_feature_x") {
		t.Errorf("pinning a feature this CPU lacks: err = %v, want one naming it", err)
	}
}
