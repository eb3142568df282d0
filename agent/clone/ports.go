package clone

import (
	"fmt"
	"net"
	"os/user"
	"strconv"
	"strings"

	"github.com/thinlab/thinlab/agent/runtime"
)

// allocPortLocked picks the lowest port of the range that no clone holds
// and nothing else listens on.
func (m *Manager) allocPortLocked() (int, error) {
	used := map[int]bool{}
	for _, r := range m.clones {
		if r.Port > 0 {
			used[r.Port] = true
		}
	}
	pp := m.cfg.Provision.PortPool
	for port := pp.From; port <= pp.To; port++ {
		if used[port] || !m.portFree(port) {
			continue
		}
		return port, nil
	}
	return 0, fmt.Errorf("%w: all %d ports of provision.portPool (%d-%d) are in use; destroy clones or widen the range", ErrNoPorts, pp.Size(), pp.From, pp.To)
}

// portFree tries to listen on port on every configured address.
func (m *Manager) portFree(port int) bool {
	for a := range strings.SplitSeq(m.cfg.Provision.ListenAddresses, ",") {
		a = strings.TrimSpace(a)
		if a == "*" {
			a = ""
		}
		l, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
		if err != nil {
			return false
		}
		_ = l.Close() // only probing that the port is free
	}
	return true
}

// portTaken recognizes postgres failing to bind its port.
func portTaken(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "Address already in use") || strings.Contains(msg, "could not create any TCP/IP sockets")
}

// movePort gives a clone being created a new port.
func (m *Manager) movePort(id string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.clones[id]
	if !ok {
		return 0, ErrNotFound
	}
	old := r.Port
	r.Port = 0
	port, err := m.allocPortLocked()
	if err != nil {
		r.Port = old
		return 0, err
	}
	r.Port = port
	m.changedLocked()
	return port, nil
}

// allocUIDLocked picks the lowest uid of provision.cloneUIDs that no clone
// holds, no process runs as (a clone of another agent on the host, or a
// leftover) and no account of the host has.
func (m *Manager) allocUIDLocked() (uint32, error) {
	used := map[uint32]bool{}
	for _, r := range m.clones {
		if r.UID != 0 {
			used[r.UID] = true
		}
	}
	ids := m.cfg.Provision.CloneUIDs
	for uid := ids.From; uid <= ids.To && uid >= ids.From; uid++ {
		if used[uid] || runtime.UIDInUse(uid) {
			continue
		}
		if _, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
			continue
		}
		return uid, nil
	}
	return 0, fmt.Errorf("all %d uids of provision.cloneUIDs (%d-%d) are in use; destroy clones or widen the range", ids.To-ids.From+1, ids.From, ids.To)
}
