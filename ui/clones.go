package ui

import "time"

// Clones is the Clones page: the clones and snapshots of every agent of
// the organization, as each agent reported them just now.
type Clones struct {
	Agents    []CloneAgent
	CanCreate bool
	// CanSnapshot and CanDeleteSnapshot show the snapshot forms.
	CanSnapshot       bool
	CanDeleteSnapshot bool
	// Form keeps what was entered when creating failed (never the
	// password).
	Form CloneForm
	// LabelFilter is the page's ?label= filter as typed ("k=v, k2").
	LabelFilter string
}

// CloneAgent is one agent with its clones and snapshots.
type CloneAgent struct {
	ID        string
	Name      string
	Connected bool
	// Error says why its clones and snapshots are not shown (not
	// connected, did not answer).
	Error     string
	Clones    []CloneRow
	Snapshots []SnapshotRow
}

// CloneRow is one clone in the list.
type CloneRow struct {
	AgentID   string
	ID        string
	Status    string // DLE status code: OK, CREATING, RESETTING, DELETING, FATAL
	Snapshot  string
	Protected bool
	Created   string // as the agent reported it
	Href      string
	Labels    string // "k=v, k2=v2"
}

// SnapshotRow is one snapshot of an agent.
type SnapshotRow struct {
	ID          string
	Pool        string
	DataStateAt string
	Clones      int
	Protected   bool
	Labels      string
}

// CloneForm is the create form's values.
type CloneForm struct {
	Agent     string
	Snapshot  string
	ID        string
	Username  string
	Protected bool
	Labels    string // as typed: "k=v, k2=v2"
}

// CloneDetail is a clone's page.
type CloneDetail struct {
	AgentID   string
	AgentName string
	ID        string
	Status    string
	Message   string
	Snapshot  string
	Protected bool
	Created   string
	// InProgress: the page reloads itself until the clone is ready.
	InProgress bool
	// Connection, shown once the clone is OK.
	ConnStr  string
	Host     string
	Port     string
	User     string
	DBName   string
	HostNote string // why the host is a placeholder, when it is
	// ConnectCommand is the thinlab CLI line that forwards a local port
	// to the clone through the platform.
	ConnectCommand string
	// Charts are the clone's CPU and memory over the last day.
	Charts    []Chart
	Snapshots []SnapshotRow // reset targets
	CanUpdate bool
	CanDelete bool
	// Base is the clone's page path; its forms post below it.
	Base    string
	Checked time.Time
}

func hasClones(v Clones) bool {
	for _, a := range v.Agents {
		if len(a.Clones) > 0 {
			return true
		}
	}
	return false
}

func hasSnapshots(v Clones) bool {
	for _, a := range v.Agents {
		if len(a.Snapshots) > 0 {
			return true
		}
	}
	return false
}

// statusLabel is how a clone's DLE status reads.
func statusLabel(code string) string {
	switch code {
	case "CREATING":
		return "creating"
	case "RESETTING":
		return "resetting"
	case "DELETING":
		return "deleting"
	case "EXPORTING":
		return "exporting"
	case "":
		return "unknown"
	}
	return code
}
