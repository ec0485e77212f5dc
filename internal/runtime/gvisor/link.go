package gvisor

import (
	"context"
	"errors"
	"fmt"

	"github.com/stasis-sandbox/stasis/internal/netpool"
	"github.com/stasis-sandbox/stasis/internal/runtime"
)

var _ runtime.LinkChecker = (*Driver)(nil)

// CheckLink checks the host end of a running sandbox's link (see
// netpool.Pool.Check). A vanished link is runtime.ErrLinkGone.
func (d *Driver) CheckLink(ctx context.Context, id string) (bool, error) {
	repaired, err := d.cfg.Net.Check(ctx, id)
	if errors.Is(err, netpool.ErrGone) || errors.Is(err, netpool.ErrNotFound) {
		return false, fmt.Errorf("gvisor: %w: %w", runtime.ErrLinkGone, err)
	}
	return repaired, err
}
