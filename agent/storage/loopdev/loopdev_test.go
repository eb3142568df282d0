package loopdev

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/testenv"
)

func TestParseList(t *testing.T) {
	out := []byte("/dev/loop0: [65024]:9984429 (/tmp/x/pool.img)\n" +
		"/dev/loop1: [65024]:9984430 (/tmp/y/pool.img (deleted))\n" +
		"/dev/loop2: [65024]:9984431 (/tmp/x/pool.img (deleted))\n")
	if got, want := parseList(out, "/tmp/x/pool.img"), []string{"/dev/loop0", "/dev/loop2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got := parseList(out, "/tmp/z.img"); got != nil {
		t.Fatalf("got %v for an unknown image", got)
	}
}

func TestAttachDetach(t *testing.T) {
	testenv.NeedsRoot(t, "root, for loop devices")
	ctx := t.Context()
	r := command.Runner{}
	img := filepath.Join(t.TempDir(), "x.img")
	if err := CreateImage(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if err := CreateImage(img, 64<<20); err == nil {
		t.Fatal("CreateImage overwrote an existing image")
	}
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 64<<20 {
		t.Fatalf("image size %d, want %d", st.Size(), 64<<20)
	}
	dev, err := Attach(ctx, r, img)
	if err != nil {
		t.Fatal(err)
	}
	// A fallback for a failure before the test's own Detach below, after
	// which this one fails harmlessly: the device is already gone. Background:
	// t.Context() is already cancelled when cleanups run.
	t.Cleanup(func() { _ = Detach(context.Background(), r, dev) })
	devs, err := DevicesFor(ctx, r, img)
	if err != nil || len(devs) != 1 || devs[0] != dev {
		t.Fatalf("DevicesFor = %v, %v; want [%s]", devs, err, dev)
	}
	if err := Detach(ctx, r, dev); err != nil {
		t.Fatal(err)
	}
	if err := Detach(ctx, r, dev); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	devs, err = DevicesFor(ctx, r, img)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 0 {
		t.Fatalf("still attached after detach: %v, want none", devs)
	}
}
