package agent

import (
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"syscall"
	"testing"
)

func TestFSErrorMapping(t *testing.T) {
	pe := func(errno syscall.Errno) error { return &fs.PathError{Op: "open", Path: "/x", Err: errno} }
	for _, tc := range []struct {
		err      error
		forWrite bool
		status   int
		code     string
	}{
		{pe(syscall.ENOENT), false, http.StatusNotFound, "not_found"},
		{pe(syscall.ENOTDIR), false, http.StatusNotFound, "not_found"},
		{pe(syscall.ENOTDIR), true, http.StatusBadRequest, "invalid_path"},
		{pe(syscall.EISDIR), true, http.StatusBadRequest, "is_directory"},
		{pe(syscall.EACCES), false, http.StatusForbidden, "permission_denied"},
		{pe(syscall.EPERM), true, http.StatusForbidden, "permission_denied"},
		{pe(syscall.EROFS), true, http.StatusForbidden, "permission_denied"},
		{&os.LinkError{Op: "rename", Old: "/.stasis/.stasis-upload-1", New: "/.stasis/agent", Err: syscall.EBUSY}, true, http.StatusForbidden, "permission_denied"},
		{pe(syscall.ETXTBSY), true, http.StatusForbidden, "permission_denied"},
		{pe(syscall.ENOSPC), true, http.StatusInsufficientStorage, "no_space"},
		{fmt.Errorf("copy: %w", pe(syscall.EDQUOT)), true, http.StatusInsufficientStorage, "no_space"},
		{pe(syscall.ENAMETOOLONG), false, http.StatusBadRequest, "invalid_path"},
		{pe(syscall.EIO), false, http.StatusInternalServerError, "internal"},
	} {
		got := fsError(tc.err, "/x", tc.forWrite)
		if got.status != tc.status || got.code != tc.code || got.msg == "" {
			t.Errorf("%v (write %v): got %d %s %q, want %d %s", tc.err, tc.forWrite, got.status, got.code, got.msg, tc.status, tc.code)
		}
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b":     "/a/b",
		"/a//b/./": "/a/b",
		"/":        "/",
		"/a/b..c":  "/a/b..c",
	} {
		if got, err := cleanPath(in); err != nil || got != want {
			t.Errorf("cleanPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "a", "./a", "/a/../b", "/..", "/a/..", "/a\x00b"} {
		if _, err := cleanPath(in); err == nil {
			t.Errorf("cleanPath(%q) accepted", in)
		}
	}
}
