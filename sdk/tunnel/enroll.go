// Package tunnel holds the wire contract between an agent and the
// platform: enrollment, the tunnel's websocket endpoint and the messages
// exchanged over it. Both sides import it; it imports neither.
package tunnel

import "time"

// Platform endpoints used by agents. They live outside /api/v1 (which is
// for people and their tokens) and are authenticated by the enrollment
// token (EnrollPath) or the agent credential (TunnelPath, as
// "Authorization: Bearer <credential>").
const (
	EnrollPath = "/api/agent/v1/enroll"
	TunnelPath = "/api/agent/v1/tunnel"
)

// CredentialFile is the name of the file in the agent's state directory
// that holds its credential (mode 0600).
const CredentialFile = "platform-credential.json"

// EnrollRequest is what an agent sends once to exchange an enrollment
// token for its long-lived credential.
type EnrollRequest struct {
	Token string     `json:"token"`
	Facts AgentFacts `json:"facts"`
}

// EnrollResponse carries the agent's identity and credential. The
// credential is shown only here: the platform keeps a hash.
type EnrollResponse struct {
	AgentID        string `json:"agentId"`
	OrganizationID string `json:"organizationId"`
	Name           string `json:"name"`
	Credential     string `json:"credential"`
}

// AgentFacts describe an agent; sent at enrollment and again on every
// tunnel connect (they change: pools fill, PostgreSQL versions are added).
type AgentFacts struct {
	// Name is the agent's own name (config platform.name, default the
	// host name); admins may rename the agent on the platform.
	Name       string `json:"name"`
	Version    string `json:"version"`
	InstanceID string `json:"instanceId"`
	// DLEAPIVersion is the Database Lab Engine API version the agent's
	// local API speaks.
	DLEAPIVersion      string     `json:"dleApiVersion"`
	PostgresVersions   []string   `json:"postgresVersions"`
	Pools              []PoolFact `json:"pools"`
	MaxClones          int        `json:"maxClones"` // 0 means unlimited
	CloneUIDsAvailable int        `json:"cloneUidsAvailable"`
	StartedAt          time.Time  `json:"startedAt"`
	// Retrieval is the state of the agent's data retrieval, as its DLE
	// API reports it under "retrieving" (empty when it has none).
	Retrieval RetrievalFact `json:"retrieval"`
}

// RetrievalFact is how the agent gets its data: mode (logical, physical),
// status (finished, refreshing, failed, ...) and the refresh times.
type RetrievalFact struct {
	Mode        string     `json:"mode,omitempty"`
	Status      string     `json:"status,omitempty"`
	LastRefresh *time.Time `json:"lastRefresh,omitempty"`
	NextRefresh *time.Time `json:"nextRefresh,omitempty"`
}

// PoolFact is one pool of an agent.
type PoolFact struct {
	Name       string `json:"name"`
	Backend    string `json:"backend"` // zfs, lvm, btrfs, reflink
	Mode       string `json:"mode"`    // active, refreshing, empty, ...
	TotalBytes uint64 `json:"totalBytes"`
	FreeBytes  uint64 `json:"freeBytes"`
	UsedBytes  uint64 `json:"usedBytes"`
	Snapshots  int    `json:"snapshots"`
	Clones     int    `json:"clones"`
}
