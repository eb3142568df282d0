package ui

// Branches is an agent's branch tree page: each branch with the chain of
// snapshots it points at (DLE 4 branching), as the agent reported it.
type Branches struct {
	AgentID   string
	AgentName string
	// Roots are the branches without a parent branch; each holds its
	// children, so the page draws the tree by nesting.
	Roots []BranchNode
	// ClonesHref is the organization's clones page.
	ClonesHref string
	// DiffHref is where the compare form goes; Snapshots its choices.
	DiffHref  string
	Snapshots []string
}

// BranchNode is one branch, its commits (head first) and the branches
// made from it.
type BranchNode struct {
	Name      string
	Head      string
	Protected bool
	Labels    string
	Commits   []CommitRow
	Children  []BranchNode
	// Error says why the branch's log could not be read.
	Error string
}

// CommitRow is one snapshot on a branch's chain.
type CommitRow struct {
	ID          string
	DataStateAt string
	Message     string
	Author      string
	Clones      []CloneLink
}

// CloneLink is a clone made from a snapshot, linked to its page.
type CloneLink struct {
	ID   string
	Href string
}

// CloneDiff is the page of what a clone changed since its snapshot
// (CloneID set), or of what changed between two snapshots (To set).
type CloneDiff struct {
	AgentName string
	CloneID   string
	CloneHref string
	From      string
	To        string
	Database  string
	Tables    []TableChange
	DDL       []string
}

// TableChange is one table that differs.
type TableChange struct {
	Name          string
	Change        string
	SizeFrom      string
	SizeTo        string
	RowsFrom      string
	RowsTo        string
	SchemaChanged bool
}
