// Package ui holds the platform's templ components and static assets. It
// renders the view models below and never queries anything: the web
// package fills them in. Pages are readable and usable without JavaScript.
package ui

import (
	"embed"
	"strconv"
	"time"
)

// Static holds the stylesheet and other assets, served under /static/.
//
//go:embed static
var Static embed.FS

// Page is what every page's layout needs.
type Page struct {
	Title string
	// User is nil on pages shown before sign-in.
	User *User
	// Org is the organization being looked at (nil outside one).
	Org *Org
	// Orgs lists the user's organizations for the switcher.
	Orgs []Org
	// Nav is the organization's navigation; web decides what is shown.
	Nav []NavItem
	// CSRF is the session's token that every POST form carries.
	CSRF   string
	Flash  []Flash
	Status int
	// RefreshSeconds, when positive, reloads the page after that many
	// seconds (a clone in progress; no JavaScript needed).
	RefreshSeconds int
}

// User is the signed-in person.
type User struct {
	ID    string
	Email string
	Name  string
}

// Org is an organization as the signed-in user sees it.
type Org struct {
	ID   string
	Slug string
	Name string
	Role string
}

// NavItem is one entry of the navigation.
type NavItem struct {
	Label  string
	Href   string
	Active bool
	// Soon marks sections not built yet (shown greyed out, no link).
	Soon bool
	// Count, when positive, is shown next to the label (unread
	// notifications).
	Count int64
}

// Flash is a one-time message shown at the top of the next page.
type Flash struct {
	Kind string // success, error or info
	Text string
}

// Provider is one sign-in button.
type Provider struct {
	DisplayName string
	LoginURL    string
}

// SignIn is the sign-in page.
type SignIn struct {
	Providers []Provider
	SignedOut bool
	// Message explains why the person landed here (e.g. an invitation).
	Message string
}

// Dashboard is an organization's overview.
type Dashboard struct {
	Members     int
	Invitations int
	Tokens      int
	Permissions []string
	// ShowInvitations and ShowTokens hide tiles the role cannot open.
	ShowInvitations bool
	ShowTokens      bool
}

// Member is one row of the members table.
type Member struct {
	UserID   string
	Email    string
	Name     string
	Role     string
	Since    time.Time
	IsSelf   bool
	CanEdit  bool
	Assignee []string // roles this viewer may assign
}

// Members is the members page.
type Members struct {
	Members   []Member
	CanManage bool
}

// Invitation is one open invitation.
type Invitation struct {
	ID        string
	Email     string
	Role      string
	Created   time.Time
	Expires   time.Time
	InvitedBy string
}

// Invitations is the invitations page.
type Invitations struct {
	Invitations []Invitation
	CanManage   bool
	Roles       []string
	// NewLink is the acceptance link of an invitation just created (shown
	// once: only its hash is stored).
	NewLink  string
	NewEmail string
}

// AcceptInvitation is the page an invited person lands on.
type AcceptInvitation struct {
	OrgName string
	Email   string
	Role    string
	Secret  string
	Error   string
}

// Token is one API token row.
type Token struct {
	ID       string
	Name     string
	Prefix   string
	Owner    string
	Created  time.Time
	Expires  *time.Time
	LastUsed *time.Time
	Revoked  *time.Time
	CanEdit  bool
}

// Tokens is the API tokens page.
type Tokens struct {
	Tokens    []Token
	CanManage bool
	// NewSecret is a token just created, shown once.
	NewSecret string
	NewName   string
	APIBase   string
}

// AuditEvent is one row of the audit log.
type AuditEvent struct {
	ID     int64
	Time   time.Time
	Actor  string
	Action string
	Target string
	IP     string
	Result string
	Error  string
}

// AuditFilter echoes the filter form.
type AuditFilter struct {
	Actor  string
	Action string
	Target string
	Since  string
	Until  string
}

// Audit is the audit log page.
type Audit struct {
	Events    []AuditEvent
	Filter    AuditFilter
	CSVURL    string
	JSONURL   string
	Truncated bool
	Limit     int
}

// Error is a refusal or failure page.
type Error struct {
	Status  int
	Title   string
	Message string
}

// TimeFormat is how times are shown: UTC, to the minute.
const TimeFormat = "2006-01-02 15:04 UTC"

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(TimeFormat)
}

func fmtTimePtr(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return fmtTime(*t)
}

// AgentPool is one pool of an agent, as the agent last reported it.
type AgentPool struct {
	Name      string
	Backend   string
	Mode      string
	UsedBytes uint64
	FreeBytes uint64
	Snapshots int
	Clones    int
}

// Agent is one row of the agents page. The connection (the platform's
// view of the tunnel) and the health (the agent's own last report) are
// kept apart: a connected agent may be unhealthy and the other way round.
type Agent struct {
	ID                string
	Name              string
	Version           string
	State             string // connected, stale, disconnected, never_connected, revoked
	ConnectedSince    *time.Time
	LastHeartbeat     *time.Time
	DisconnectedSince *time.Time
	Enrolled          time.Time
	Revoked           *time.Time
	// Health is the severity of the agent's last health report ("" when
	// none arrived yet) and HealthMessage its text.
	Health           string
	HealthMessage    string
	HealthAt         *time.Time
	Pools            []AgentPool
	PostgresVersions []string
	Retrieval        string // mode and status, "" when unknown
	LastRefresh      *time.Time
	CanManage        bool
}

// EnrollmentToken is one row of the enrollment tokens table.
type EnrollmentToken struct {
	ID      string
	Name    string
	Prefix  string
	Uses    int
	MaxUses *int
	Created time.Time
	Expires time.Time
	Revoked *time.Time
	Usable  bool
}

// Agents is the agents page.
type Agents struct {
	Agents    []Agent
	Tokens    []EnrollmentToken
	CanManage bool
	// NewSecret is an enrollment token just created (shown once) and
	// NewCommand the command that enrolls an agent with it.
	NewSecret  string
	NewName    string
	NewCommand string
}

// FormatBytes shows a byte count in binary units (pages and their
// handlers).
func FormatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return strconv.FormatFloat(float64(n)/float64(div), 'f', 1, 64) + " " + string("KMGTPE"[exp]) + "iB"
}

func fmtUses(uses int, maxUses *int) string {
	if maxUses == nil {
		return strconv.Itoa(uses) + " (multi-use)"
	}
	return strconv.Itoa(uses) + " of " + strconv.Itoa(*maxUses)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// NotificationItem is one entry of the inbox.
type NotificationItem struct {
	ID          int64
	Event       string
	Severity    string
	Description string
	Agent       string
	Target      string
	Message     string
	Count       int
	LastAt      time.Time
	Unread      bool
}

// Inbox is the in-app inbox page.
type Inbox struct {
	Items  []NotificationItem
	Unread int64
	// CanManage shows the link to channels and dead letters.
	CanManage bool
}

// PreferenceRow is one event of the preferences page: per channel, the
// setting (on, off, or "" to inherit) and what it inherits.
type PreferenceRow struct {
	Event       string
	Description string
	Severity    string
	Cells       []PreferenceCell
}

// PreferenceCell is one (event, channel) setting.
type PreferenceCell struct {
	Channel string
	// Value is "on", "off" or "" (inherit).
	Value string
	// Effective is what applies with Value "".
	Effective bool
}

// PreferenceTable is one table of settings: the member's own or the
// organization's defaults.
type PreferenceTable struct {
	Action   string // where the form posts
	Channels []string
	Rows     []PreferenceRow
}

// Preferences is the notification preferences page.
type Preferences struct {
	Mine PreferenceTable
	// Org is set for those who may change the organization's defaults.
	Org *PreferenceTable
	// EmailOff: no SMTP server is configured.
	EmailOff bool
}

// Channel is one Slack or webhook channel.
type Channel struct {
	ID      string
	Kind    string
	Name    string
	URL     string
	Created time.Time
}

// DeadLetter is a message that ran out of attempts.
type DeadLetter struct {
	ID        int64
	Channel   string
	Recipient string
	Event     string
	Target    string
	Attempts  int
	LastError string
	Created   time.Time
}

// Channels is the channels and dead letters page (admins).
type Channels struct {
	Channels    []Channel
	DeadLetters []DeadLetter
	Pending     int64
	// NewSecret is a webhook channel's signing secret, shown once.
	NewSecret string
	NewName   string
}
