package tunnel

// The tunnel protocol, version 1.
//
// Transport. The agent dials out to the platform: an HTTPS GET upgraded to
// a websocket at TunnelPath, authenticated by "Authorization: Bearer
// <credential>" and announcing ProtocolVersion in VersionHeader. Every
// websocket message is binary; the stream of their payloads is a byte
// stream (NewConn turns the websocket into a net.Conn). On top of it runs
// one yamux session (github.com/hashicorp/yamux): the agent is the yamux
// client, the platform the yamux server. yamux gives independent,
// flow-controlled streams (a bounded receive window per stream), so a slow
// clone connection never stalls an API call, and no side buffers without
// bound.
//
// Streams. Whoever opens a stream writes one StreamHeader as a single JSON
// line (at most MaxLineBytes); the other side answers one StreamReply line
// ({"ok":true} or {"ok":false,"error":"..."}) and, on refusal, closes the
// stream. After an accepted reply the stream carries what its Kind says:
//
//   - KindControl (agent -> platform, the first stream, one per session):
//     the agent writes Hello (its facts); the platform answers Welcome.
//     Then either side may write ControlMessage lines (facts updates).
//   - KindEvents (agent -> platform, one per session): the agent writes
//     EventBatch lines, one at a time; the platform answers each with an
//     EventAck after it has stored the batch. The agent keeps events in an
//     on-disk journal until acked and resends unacked ones after a
//     reconnect; the platform drops events whose ID it already holds, so
//     each event is stored once.
//   - KindAPI (platform -> agent): an HTTP/1.1 connection to the agent's own
//     API (requests and responses as on a TCP connection, keep-alive
//     allowed).
//   - KindTCP (platform -> agent): raw bytes to 127.0.0.1:Port on the agent
//     host; the agent accepts only ports of its live clones.
//
// Heartbeats. Both sides send yamux pings (every HeartbeatInterval); a ping
// unanswered within HeartbeatTimeout closes the session, so each side
// notices a dead peer within HeartbeatInterval+HeartbeatTimeout (10 s).
//
// Versioning. Every header and message carries "v". A receiver refuses a
// version it does not know with a reason; fields are only ever added.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// ProtocolVersion is the version of the tunnel protocol described above.
const ProtocolVersion = 1

// VersionHeader is the HTTP header of the websocket upgrade request that
// carries the agent's ProtocolVersion.
const VersionHeader = "Thinlab-Tunnel-Version"

// MaxLineBytes bounds one JSON line of the protocol (headers, replies,
// control messages, event batches). Larger lines are a protocol error.
const MaxLineBytes = 1 << 20

// Heartbeat timing shared by both sides (see the protocol description).
const (
	HeartbeatInterval = 5 * time.Second
	HeartbeatTimeout  = 5 * time.Second
)

// MaxEventsPerBatch bounds the events of one EventBatch.
const MaxEventsPerBatch = 100

// Kind names what a stream carries.
type Kind string

// The stream kinds. Nothing else is accepted.
const (
	KindControl Kind = "control"
	KindEvents  Kind = "events"
	KindAPI     Kind = "api"
	KindTCP     Kind = "tcp"
)

// Valid reports whether k is one of the known kinds.
func (k Kind) Valid() bool {
	switch k {
	case KindControl, KindEvents, KindAPI, KindTCP:
		return true
	}
	return false
}

// StreamHeader opens every stream.
type StreamHeader struct {
	V    int  `json:"v"`
	Kind Kind `json:"kind"`
	// Port is the target port on the agent host (KindTCP only).
	Port int `json:"port,omitempty"`
}

// StreamReply answers a StreamHeader.
type StreamReply struct {
	V     int    `json:"v"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Hello is the agent's first message on the control stream.
type Hello struct {
	V     int        `json:"v"`
	Facts AgentFacts `json:"facts"`
}

// Welcome is the platform's answer to Hello.
type Welcome struct {
	V              int    `json:"v"`
	AgentID        string `json:"agentId"`
	OrganizationID string `json:"organizationId"`
}

// ControlType names a control message.
type ControlType string

// Control message types.
const (
	// ControlFacts carries updated agent facts (agent -> platform).
	ControlFacts ControlType = "facts"
)

// ControlMessage is one line on the control stream after Welcome.
type ControlMessage struct {
	V     int         `json:"v"`
	Type  ControlType `json:"type"`
	Facts *AgentFacts `json:"facts,omitempty"`
}

// Event is one agent event as carried by the tunnel: the JSON shape of the
// agent's events (agent/events.Event). ID is unique per event; the
// platform drops events whose ID it already stored.
type Event struct {
	ID       string          `json:"id"`
	Time     time.Time       `json:"time"`
	Kind     string          `json:"kind"`
	Severity string          `json:"severity"`
	Pool     string          `json:"pool,omitempty"`
	Clone    string          `json:"clone,omitempty"`
	Snapshot string          `json:"snapshot,omitempty"`
	Message  string          `json:"message,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
}

// EventBatch is one batch of events (at most MaxEventsPerBatch). Seq
// numbers batches within one events stream.
type EventBatch struct {
	V      int     `json:"v"`
	Seq    uint64  `json:"seq"`
	Events []Event `json:"events"`
}

// EventAck confirms that the batch Seq is stored. Error, when set, says the
// platform could not store it: the agent keeps the events and retries.
type EventAck struct {
	V     int    `json:"v"`
	Seq   uint64 `json:"seq"`
	Error string `json:"error,omitempty"`
}

// ErrLineTooLong is returned for a protocol line over MaxLineBytes.
var ErrLineTooLong = errors.New("tunnel: protocol line too long")

// WriteLine writes v as one JSON line.
func WriteLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) >= MaxLineBytes {
		return ErrLineTooLong
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadLine reads one JSON line from r into v. It reads byte by byte so
// that nothing after the line is consumed: the stream's payload (HTTP,
// raw TCP) follows the header directly. Use ReadLineBuffered on streams
// that carry only lines.
func ReadLine(r io.Reader, v any) error {
	var buf []byte
	var one [1]byte
	for {
		if _, err := io.ReadFull(r, one[:]); err != nil {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if one[0] == '\n' {
			break
		}
		if len(buf) >= MaxLineBytes {
			return ErrLineTooLong
		}
		buf = append(buf, one[0])
	}
	return decodeLine(buf, v)
}

// ReadLineBuffered reads one JSON line from a buffered reader.
func ReadLineBuffered(r *bufio.Reader, v any) error {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) > MaxLineBytes {
			return ErrLineTooLong
		}
		buf = append(buf, chunk...)
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(buf) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return decodeLine(buf[:len(buf)-1], v)
}

// versioned is implemented by every message: all carry "v".
type versioned struct {
	V int `json:"v"`
}

func decodeLine(line []byte, v any) error {
	var ver versioned
	if err := json.Unmarshal(line, &ver); err != nil {
		return fmt.Errorf("tunnel: bad protocol line: %w", err)
	}
	if ver.V != ProtocolVersion {
		return fmt.Errorf("tunnel: protocol version %d is not supported (this side speaks %d)", ver.V, ProtocolVersion)
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("tunnel: bad protocol line: %w", err)
	}
	return nil
}

// Accept writes an accepting StreamReply.
func Accept(w io.Writer) error {
	return WriteLine(w, StreamReply{V: ProtocolVersion, OK: true})
}

// Refuse writes a refusing StreamReply with reason.
func Refuse(w io.Writer, reason string) error {
	return WriteLine(w, StreamReply{V: ProtocolVersion, Error: reason})
}

// RefusedError is the error of an opener whose stream was refused.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "tunnel: stream refused: " + e.Reason }

// Open writes h on a fresh stream and waits for the reply; a refusal is a
// *RefusedError.
func Open(rw io.ReadWriter, h StreamHeader) error {
	h.V = ProtocolVersion
	if err := WriteLine(rw, h); err != nil {
		return err
	}
	var rep StreamReply
	if err := ReadLine(rw, &rep); err != nil {
		return err
	}
	if !rep.OK {
		return &RefusedError{Reason: rep.Error}
	}
	return nil
}
