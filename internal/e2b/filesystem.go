package e2b

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	pb "github.com/stasis-sandbox/stasis/internal/e2b/envdpb/filesystem"
)

// The filesystem RPCs run small coreutils/findutils scripts through the
// agent as the request's user, so permissions are the user's and one
// `find -printf` describes entries with owner, group and symlink target.
// They need GNU find and realpath in the image (stasis/base has them).

// Exit codes of the scripts, mapped onto Connect codes.
const (
	exitNotFound = 44
	exitExists   = 45
	exitNotDir   = 46
)

// entryFormat prints one entry per NUL-terminated record:
// type, size, mode (octal), owner, group, mtime, symlink target, path.
const entryFormat = `%y\t%s\t%m\t%u\t%g\t%T@\t%l\t%p\0`

// resolve makes $p the absolute form of path (relative to the user's home).
func resolve(p string) string {
	return "p=$(realpath -ms -- " + shellQuote(p) + ") || exit 1; "
}

const mustExist = `[ -e "$p" ] || [ -L "$p" ] || { echo "path '$p' does not exist" >&2; exit 44; }; `

// script runs a shell script as the call's user and returns its stdout, or
// the matching Connect error.
func (s *Server) script(ctx context.Context, c *envdCall, user, sh string) ([]byte, error) {
	if user == "" {
		user = c.user
	}
	var out, errb bytes.Buffer
	st, err := c.target.Agent.Run(ctx, agentclient.ExecRequest{Command: sh, User: user, TimeoutS: 60}, &out, &errb)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("sandbox agent: %w", err))
	}
	msg := errors.New(strings.TrimSpace(errb.String()))
	switch st.ExitCode {
	case 0:
		return out.Bytes(), nil
	case exitNotFound:
		return nil, connect.NewError(connect.CodeNotFound, msg)
	case exitExists:
		return nil, connect.NewError(connect.CodeAlreadyExists, msg)
	case exitNotDir:
		return nil, connect.NewError(connect.CodeInvalidArgument, msg)
	}
	if st.Error != "" {
		msg = errors.New(st.Error)
	}
	if strings.Contains(msg.Error(), "Permission denied") {
		return nil, connect.NewError(connect.CodePermissionDenied, msg)
	}
	return nil, connect.NewError(connect.CodeInternal, msg)
}

// absPath resolves p against the user's home directory.
func (s *Server) absPath(ctx context.Context, c *envdCall, user, p string) (string, error) {
	out, err := s.script(ctx, c, user, resolve(p)+`printf %s "$p"`)
	if err != nil {
		return "", err
	}
	return string(out), nil
}

// parseEntries reads find's records (entryFormat).
func parseEntries(out []byte) ([]*pb.EntryInfo, error) {
	var entries []*pb.EntryInfo
	for _, rec := range bytes.Split(out, []byte{0}) {
		if len(rec) == 0 {
			continue
		}
		f := strings.SplitN(string(rec), "\t", 8)
		if len(f) != 8 {
			return nil, fmt.Errorf("unexpected find output %q", rec)
		}
		size, _ := strconv.ParseInt(f[1], 10, 64)
		mode, _ := strconv.ParseUint(f[2], 8, 32)
		secs, _ := strconv.ParseFloat(f[5], 64)
		e := &pb.EntryInfo{
			Name: baseName(f[7]), Path: f[7], Size: size, Mode: uint32(mode),
			Owner: f[3], Group: f[4],
			ModifiedTime: timestamppb.New(time.Unix(0, int64(secs*1e9))),
		}
		fm := fs.FileMode(mode)
		switch f[0] {
		case "f":
			e.Type = pb.FileType_FILE_TYPE_FILE
		case "d":
			e.Type = pb.FileType_FILE_TYPE_DIRECTORY
			fm |= fs.ModeDir
		case "l":
			e.Type = pb.FileType_FILE_TYPE_SYMLINK
			fm |= fs.ModeSymlink
			target := f[6]
			e.SymlinkTarget = &target
		}
		e.Permissions = fm.String()
		entries = append(entries, e)
	}
	return entries, nil
}

func baseName(p string) string {
	if p == "/" {
		return "/"
	}
	return p[strings.LastIndexByte(p, '/')+1:]
}

func (s *Server) entry(ctx context.Context, c *envdCall, sh string) (*pb.EntryInfo, error) {
	out, err := s.script(ctx, c, "", sh)
	if err != nil {
		return nil, err
	}
	es, err := parseEntries(out)
	if err != nil || len(es) != 1 {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("describe entry: %v", err))
	}
	return es[0], nil
}

func findSelf(v string) string {
	return `find ` + v + ` -maxdepth 0 -printf '` + entryFormat + `'`
}

type filesystemService struct{ s *Server }

func (fsv *filesystemService) Stat(ctx context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	e, err := fsv.s.entry(ctx, callFrom(ctx), resolve(req.Msg.GetPath())+mustExist+findSelf(`"$p"`))
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StatResponse{Entry: e}), nil
}

func (fsv *filesystemService) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	depth := req.Msg.GetDepth()
	if depth == 0 {
		depth = 1
	}
	sh := resolve(req.Msg.GetPath()) + mustExist +
		`[ -d "$p" ] || { echo "path '$p' is not a directory" >&2; exit 46; }; ` +
		`find "$p" -mindepth 1 -maxdepth ` + strconv.Itoa(int(depth)) + ` -printf '` + entryFormat + `'`
	out, err := fsv.s.script(ctx, callFrom(ctx), "", sh)
	if err != nil {
		return nil, err
	}
	es, err := parseEntries(out)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return connect.NewResponse(&pb.ListDirResponse{Entries: es}), nil
}

func (fsv *filesystemService) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	sh := resolve(req.Msg.GetPath()) +
		`[ -e "$p" ] && { echo "path '$p' already exists" >&2; exit 45; }; mkdir -p -- "$p" && ` + findSelf(`"$p"`)
	e, err := fsv.s.entry(ctx, callFrom(ctx), sh)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: e}), nil
}

func (fsv *filesystemService) Move(ctx context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	sh := resolve(req.Msg.GetSource()) + mustExist + `src=$p; ` + resolve(req.Msg.GetDestination()) +
		`mkdir -p -- "$(dirname -- "$p")" && mv -T -- "$src" "$p" && ` + findSelf(`"$p"`)
	e, err := fsv.s.entry(ctx, callFrom(ctx), sh)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.MoveResponse{Entry: e}), nil
}

func (fsv *filesystemService) Remove(ctx context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	if _, err := fsv.s.script(ctx, callFrom(ctx), "", resolve(req.Msg.GetPath())+`rm -rf -- "$p"`); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}

func unimplemented(what string) error {
	return connect.NewError(connect.CodeUnimplemented, fmt.Errorf("%s is not implemented yet in stasis", what))
}

func (fsv *filesystemService) CreateWatcher(ctx context.Context, req *connect.Request[pb.CreateWatcherRequest]) (*connect.Response[pb.CreateWatcherResponse], error) {
	return nil, unimplemented("CreateWatcher")
}

func (fsv *filesystemService) GetWatcherEvents(ctx context.Context, req *connect.Request[pb.GetWatcherEventsRequest]) (*connect.Response[pb.GetWatcherEventsResponse], error) {
	return nil, unimplemented("GetWatcherEvents")
}

func (fsv *filesystemService) RemoveWatcher(ctx context.Context, req *connect.Request[pb.RemoveWatcherRequest]) (*connect.Response[pb.RemoveWatcherResponse], error) {
	return nil, unimplemented("RemoveWatcher")
}
