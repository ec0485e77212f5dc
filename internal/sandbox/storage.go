package sandbox

// StorageGuard is asked before anything that takes new disk space on the
// host: the default quotas (10 GiB for each of 50 sandboxes per team)
// exceed most disks, and a full disk fails pauses and every sandbox's writes.
type StorageGuard interface {
	// Room returns an error saying why not when there is too little free space.
	Room() error
}

// checkRoom refuses new disk use with 507 insufficient_storage when the
// host's disk is below its reserve.
func (s *Service) checkRoom() error {
	if s.cfg.Storage == nil {
		return nil
	}
	if err := s.cfg.Storage.Room(); err != nil {
		s.metrics.Fail("admit", "insufficient_storage")
		return newErr(ErrStorageFull, "insufficient_storage", "not starting anything new: %v", err)
	}
	return nil
}
