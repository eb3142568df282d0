// Package ship moves a snapshot with its metadata from one pool to another
// (another agent's, or through S3) as one self-describing stream:
//
//	"THINLAB-SNAPSHOT-STREAM 1\n"
//	uint32 length, JSON header (format, snapshot name and metadata, base)
//	frames: uint32 length (1..MaxFrame), that many bytes of the backend's
//	        native stream (btrfs send, a tar of the tree)
//	uint32 0, then the trailer: uint64 payload length, SHA-256 of the payload
//
// The receiver hands the payload to the pool (storage.Shipper), which
// builds the snapshot under a temporary name and publishes it only after
// the trailer matched: a stream cut anywhere, or altered, leaves nothing.
// Integers are big-endian.
package ship

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/sidecar"
)

// Magic starts every stream; the digit is the format version.
const Magic = "THINLAB-SNAPSHOT-STREAM 1\n"

// MaxFrame bounds one frame; maxHeader bounds the JSON header (metadata
// is at most a few KiB, sidecar.MaxSize each).
const (
	MaxFrame  = 1 << 20
	maxHeader = 64 << 10
)

// ErrBadStream is a stream that is not one, or not complete, or altered.
var ErrBadStream = errors.New("bad snapshot stream")

// ErrNotShippable is a pool whose backend cannot send or receive.
var ErrNotShippable = errors.New("pool cannot ship snapshots")

// Header is the stream's JSON header.
type Header struct {
	Format      string            `json:"format"`
	Pool        string            `json:"pool"`
	Name        string            `json:"name"`
	CreatedAt   time.Time         `json:"createdAt"`
	DataStateAt time.Time         `json:"dataStateAt"`
	Message     string            `json:"message,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Base        string            `json:"base,omitempty"`
}

// shipper returns p's Shipper side or ErrNotShippable.
func shipper(p storage.Pool) (storage.Shipper, error) {
	s, ok := p.(storage.Shipper)
	if !ok {
		return nil, fmt.Errorf("%w: pool %s is %s; shipping works on btrfs and reflink pools", ErrNotShippable, p.Name(), p.Mode())
	}
	return s, nil
}

// Send writes snapshot id of p to w as a stream; with baseID, only the
// changes since that snapshot where the backend can (btrfs). labels, when
// not nil, are sent instead of the pool's (the agent keeps a snapshot's
// API labels apart from the pool). The returned Header says what was
// sent (Base empty for a full stream).
func Send(ctx context.Context, p storage.Pool, id, baseID string, labels map[string]string, w io.Writer) (Header, error) {
	sh, err := shipper(p)
	if err != nil {
		return Header{}, err
	}
	sn, err := p.GetSnapshot(ctx, id)
	if err != nil {
		return Header{}, err
	}
	_, name, err := storage.ParseSnapshotID(sn.ID)
	if err != nil {
		return Header{}, err
	}
	h := Header{Format: sh.ShipFormat(), Pool: p.Name(), Name: name, CreatedAt: sn.CreatedAt, DataStateAt: sn.DataStateAt, Message: sn.Message, Labels: sn.Labels}
	if labels != nil {
		h.Labels = labels
	}
	if baseID != "" && sh.Incremental() {
		base, err := p.GetSnapshot(ctx, baseID)
		if err != nil {
			return Header{}, fmt.Errorf("base: %w", err)
		}
		if _, h.Base, err = storage.ParseSnapshotID(base.ID); err != nil {
			return Header{}, err
		}
	} else {
		baseID = ""
	}
	raw, err := json.Marshal(h)
	if err != nil {
		return Header{}, err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	if _, err := bw.WriteString(Magic); err != nil {
		return Header{}, err
	}
	if err := writeU32(bw, uint32(len(raw))); err != nil { //nolint:gosec // G115: a few KiB of JSON
		return Header{}, err
	}
	if _, err := bw.Write(raw); err != nil {
		return Header{}, err
	}
	fw := &frameWriter{w: bw, sum: sha256.New()}
	if err := sh.SendSnapshot(ctx, sn.ID, baseID, fw); err != nil {
		return Header{}, err
	}
	if err := fw.close(); err != nil {
		return Header{}, err
	}
	return h, bw.Flush()
}

// Receive reads a stream from r and makes its snapshot in p under the
// sender's snapshot name. Nothing is left in p unless the whole stream
// arrived intact.
func Receive(ctx context.Context, p storage.Pool, r io.Reader) (storage.Snapshot, error) {
	sh, err := shipper(p)
	if err != nil {
		return storage.Snapshot{}, err
	}
	br := bufio.NewReaderSize(r, 64<<10)
	h, err := ReadHeader(br)
	if err != nil {
		return storage.Snapshot{}, err
	}
	if h.Format != sh.ShipFormat() {
		return storage.Snapshot{}, fmt.Errorf("%w: the stream is %s (from a %s pool) and pool %s takes %s: ship between pools of the same kind", ErrNotShippable, h.Format, h.Format, p.Name(), sh.ShipFormat())
	}
	if h.Base != "" {
		if _, err := p.GetSnapshot(ctx, p.Name()+"@"+h.Base); err != nil {
			return storage.Snapshot{}, fmt.Errorf("the stream holds the changes since snapshot %s, which pool %s does not have: ship that one first or send a full stream: %w", h.Base, p.Name(), err)
		}
	}
	fr := &frameReader{r: br, sum: sha256.New()}
	verify := func() error {
		if _, err := io.Copy(io.Discard, fr); err != nil {
			return err
		}
		return fr.checkTrailer()
	}
	return sh.ReceiveSnapshot(ctx, storage.ShippedSnapshot{
		Name: h.Name, CreatedAt: h.CreatedAt, DataStateAt: h.DataStateAt,
		Message: h.Message, Labels: h.Labels, Base: h.Base,
	}, fr, verify)
}

// ReadHeader reads and checks the magic and header of a stream.
func ReadHeader(r io.Reader) (Header, error) {
	magic := make([]byte, len(Magic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != Magic {
		return Header{}, fmt.Errorf("%w: not a Thinlab snapshot stream (export one with GET /snapshots/export)", ErrBadStream)
	}
	n, err := readU32(r)
	if err != nil {
		return Header{}, fmt.Errorf("%w: header: %v", ErrBadStream, err)
	}
	if n > maxHeader {
		return Header{}, fmt.Errorf("%w: header of %d bytes (at most %d)", ErrBadStream, n, maxHeader)
	}
	raw := make([]byte, n)
	if _, err := io.ReadFull(r, raw); err != nil {
		return Header{}, fmt.Errorf("%w: header: %v", ErrBadStream, err)
	}
	var h Header
	if err := json.Unmarshal(raw, &h); err != nil {
		return Header{}, fmt.Errorf("%w: header: %v", ErrBadStream, err)
	}
	// The names reach paths: they must be snapshot names, nothing else.
	if _, _, err := storage.ParseSnapshotID("p@" + h.Name); err != nil {
		return Header{}, fmt.Errorf("%w: snapshot name %q: %v", ErrBadStream, h.Name, err)
	}
	if h.Base != "" {
		if _, _, err := storage.ParseSnapshotID("p@" + h.Base); err != nil {
			return Header{}, fmt.Errorf("%w: base snapshot name %q: %v", ErrBadStream, h.Base, err)
		}
	}
	if err := (sidecar.SnapshotMeta{Message: h.Message, Labels: h.Labels}).Validate(); err != nil {
		return Header{}, fmt.Errorf("%w: %v", ErrBadStream, err)
	}
	return h, nil
}

type frameWriter struct {
	w   *bufio.Writer
	sum hash.Hash
	n   uint64
}

func (f *frameWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		chunk := b[:min(len(b), MaxFrame)]
		if err := writeU32(f.w, uint32(len(chunk))); err != nil { //nolint:gosec // G115: at most MaxFrame
			return written, err
		}
		if _, err := f.w.Write(chunk); err != nil {
			return written, err
		}
		f.sum.Write(chunk)
		f.n += uint64(len(chunk))
		written += len(chunk)
		b = b[len(chunk):]
	}
	return written, nil
}

func (f *frameWriter) close() error {
	if err := writeU32(f.w, 0); err != nil {
		return err
	}
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], f.n)
	if _, err := f.w.Write(n[:]); err != nil {
		return err
	}
	_, err := f.w.Write(f.sum.Sum(nil))
	return err
}

// frameReader yields the payload and ends with io.EOF at the end marker;
// a stream that ends elsewhere is an ErrBadStream.
type frameReader struct {
	r    *bufio.Reader
	sum  hash.Hash
	n    uint64
	left uint32
	done bool
	err  error
}

func (f *frameReader) Read(b []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if f.done {
		return 0, io.EOF
	}
	if f.left == 0 {
		n, err := readU32(f.r)
		if err != nil {
			f.err = fmt.Errorf("%w: the stream ended before its end marker (interrupted transfer?): %v", ErrBadStream, err)
			return 0, f.err
		}
		if n == 0 {
			f.done = true
			return 0, io.EOF
		}
		if n > MaxFrame {
			f.err = fmt.Errorf("%w: frame of %d bytes (at most %d)", ErrBadStream, n, MaxFrame)
			return 0, f.err
		}
		f.left = n
	}
	if uint32(len(b)) > f.left { //nolint:gosec // G115: compared, not converted back
		b = b[:f.left]
	}
	n, err := f.r.Read(b)
	f.sum.Write(b[:n])
	f.n += uint64(n)    //nolint:gosec // G115: n >= 0
	f.left -= uint32(n) //nolint:gosec // G115: n <= f.left
	if err == io.EOF && f.left > 0 {
		f.err = fmt.Errorf("%w: the stream ended inside a frame (interrupted transfer?)", ErrBadStream)
		return n, f.err
	}
	if err != nil && err != io.EOF {
		f.err = fmt.Errorf("%w: %v", ErrBadStream, err)
		return n, f.err
	}
	return n, nil
}

// checkTrailer reads the trailer after the end marker and compares it
// with what was read.
func (f *frameReader) checkTrailer() error {
	if !f.done {
		return fmt.Errorf("%w: payload not read to its end", ErrBadStream)
	}
	var t [8 + sha256.Size]byte
	if _, err := io.ReadFull(f.r, t[:]); err != nil {
		return fmt.Errorf("%w: the stream ended before its checksum (interrupted transfer?)", ErrBadStream)
	}
	if binary.BigEndian.Uint64(t[:8]) != f.n || string(t[8:]) != string(f.sum.Sum(nil)) {
		return fmt.Errorf("%w: checksum mismatch: the stream was altered or damaged", ErrBadStream)
	}
	return nil
}

func writeU32(w io.Writer, v uint32) error {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	_, err := w.Write(b[:])
	return err
}

func readU32(r io.Reader) (uint32, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b[:]), nil
}
