package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadLineLeavesThePayload(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteLine(&buf, StreamHeader{V: ProtocolVersion, Kind: KindTCP, Port: 6001}); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("raw bytes after the header")
	var h StreamHeader
	if err := ReadLine(&buf, &h); err != nil || h.Kind != KindTCP || h.Port != 6001 {
		t.Fatalf("header %+v %v", h, err)
	}
	if rest, _ := io.ReadAll(&buf); string(rest) != "raw bytes after the header" {
		t.Fatalf("payload after the header = %q", rest)
	}
}

func TestReadLineRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string
	}{
		{"other version", `{"v":2,"kind":"api"}` + "\n", "version 2 is not supported"},
		{"no version", `{"kind":"api"}` + "\n", "version 0"},
		{"not json", "GET / HTTP/1.1\n", "bad protocol line"},
		{"torn", `{"v":1`, io.ErrUnexpectedEOF.Error()},
	} {
		var h StreamHeader
		err := ReadLine(strings.NewReader(tc.in), &h)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		err = ReadLineBuffered(bufio.NewReader(strings.NewReader(tc.in)), &h)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s (buffered): %v, want %q", tc.name, err, tc.want)
		}
	}
	long := strings.Repeat("x", MaxLineBytes+10) + "\n"
	var h StreamHeader
	if err := ReadLine(strings.NewReader(long), &h); !errors.Is(err, ErrLineTooLong) {
		t.Errorf("long line: %v", err)
	}
	if err := ReadLineBuffered(bufio.NewReader(strings.NewReader(long)), &h); !errors.Is(err, ErrLineTooLong) {
		t.Errorf("long line (buffered): %v", err)
	}
}

func TestOpenRefused(t *testing.T) {
	var out bytes.Buffer
	in := strings.NewReader(`{"v":1,"ok":false,"error":"port 22 is not the port of a live clone"}` + "\n")
	err := Open(struct {
		io.Reader
		io.Writer
	}{in, &out}, StreamHeader{Kind: KindTCP, Port: 22})
	var re *RefusedError
	if !errors.As(err, &re) || !strings.Contains(re.Reason, "port 22") {
		t.Fatalf("Open: %v", err)
	}
	if !strings.Contains(out.String(), `"kind":"tcp"`) || !strings.Contains(out.String(), `"v":1`) {
		t.Fatalf("header sent: %s", out.String())
	}
	if Kind("ssh").Valid() || !KindEvents.Valid() {
		t.Fatal("Kind.Valid")
	}
}

// FuzzReadLine: whatever a peer sends as a protocol line, reading it
// neither panics nor reads past its newline.
func FuzzReadLine(f *testing.F) {
	f.Add([]byte(`{"v":1,"kind":"tcp","port":5432}` + "\nrest"))
	f.Add([]byte(`{"v":1,"seq":3,"events":[{"id":"a","kind":"clone.ready"}]}` + "\n"))
	f.Add([]byte("\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		var h StreamHeader
		_ = ReadLine(r, &h)
		i := bytes.IndexByte(in, '\n')
		if i >= 0 && i < MaxLineBytes && r.Len() != len(in)-i-1 {
			t.Fatalf("read %d bytes past the newline", len(in)-i-1-r.Len())
		}
		var b EventBatch
		_ = ReadLineBuffered(bufio.NewReader(bytes.NewReader(in)), &b)
	})
}
