# Watches a directory with inotify and prints one line per event:
# "<event>\t<path relative to the directory>", after a first line "ready".
# Run by stasisd inside the sandbox for envd's WatchDir (python3 ctypes, no
# other dependency). argv: directory, "1" to watch subdirectories too.
import ctypes, os, struct, sys

IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_ISDIR = 0x100, 0x200, 0x400, 0x40000000
MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF

libc = ctypes.CDLL(None, use_errno=True)
root, recursive = os.path.abspath(sys.argv[1]), sys.argv[2] == "1"
if not os.path.isdir(root):
    sys.stderr.write("path '%s' is not a directory\n" % root)
    sys.exit(46 if os.path.exists(root) else 44)
fd = libc.inotify_init()
dirs = {}

def add(d):
    wd = libc.inotify_add_watch(fd, d.encode(), MASK)
    if wd >= 0:
        dirs[wd] = d

add(root)
if recursive:
    for d, subdirs, _ in os.walk(root):
        for s in subdirs:
            add(os.path.join(d, s))
out = sys.stdout
out.write("ready\n")
out.flush()
while True:
    buf = os.read(fd, 65536)
    i = 0
    while i < len(buf):
        wd, mask, _, n = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode(errors="replace")
        i += 16 + n
        if wd not in dirs:
            continue
        if mask & IN_DELETE_SELF and dirs[wd] == root:
            sys.exit(0)
        path = os.path.relpath(os.path.join(dirs[wd], name), root)
        if mask & (IN_CREATE | IN_MOVED_TO):
            if recursive and mask & IN_ISDIR:
                add(os.path.join(dirs[wd], name))
            ev = "create"
        elif mask & IN_MODIFY:
            ev = "write"
        elif mask & IN_DELETE:
            ev = "remove"
        elif mask & IN_MOVED_FROM:
            ev = "rename"
        elif mask & IN_ATTRIB:
            ev = "chmod"
        else:
            continue
        out.write(ev + "\t" + path + "\n")
    out.flush()
