package images

import (
	"context"
	"io"
)

// defaultPath is the PATH of every built-in image.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// config is what a recipe tells about the image it built.
type config struct {
	User    string
	Workdir string
	Env     []string
}

// recipe builds one built-in image.
type recipe struct {
	name string
	// version must be bumped whenever build changes what it produces: images
	// built by another version are not used and get rebuilt.
	version int
	// build fills the empty directory rootfs. Lines written to progress are
	// shown to the user. The agent mount point is added afterwards.
	build func(ctx context.Context, rootfs string, progress io.Writer) (config, error)
}

// recipes lists the built-in images, cheapest first.
var recipes = []*recipe{
	{name: "stasis/minimal", version: 1, build: buildMinimal},
	{name: "stasis/base", version: 1, build: buildBase},
}
