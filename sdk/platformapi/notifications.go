package platformapi

import "time"

// Notification is one event in the caller's inbox. Count is how many
// repeats were folded into it between FirstAt and LastAt.
type Notification struct {
	ID          int64      `json:"id"`
	Event       string     `json:"event"`
	Severity    string     `json:"severity"`
	Description string     `json:"description"`
	AgentID     string     `json:"agent_id,omitempty"`
	AgentName   string     `json:"agent_name,omitempty"`
	Target      string     `json:"target,omitempty"`
	Message     string     `json:"message,omitempty"`
	Count       int        `json:"count"`
	FirstAt     time.Time  `json:"first_at"`
	LastAt      time.Time  `json:"last_at"`
	ReadAt      *time.Time `json:"read_at,omitempty"`
}

// Inbox is the caller's inbox in an organization.
type Inbox struct {
	Items  []Notification `json:"items"`
	Unread int64          `json:"unread"`
}

// NotificationKind is one event of the catalogue.
type NotificationKind struct {
	Name        string `json:"name"`
	Severity    string `json:"severity"`
	Description string `json:"description"`
	// DefaultEmail: emailed to members unless a preference turns it off.
	DefaultEmail bool `json:"default_email"`
}

// NotificationPreference turns one event ("*": every event) on or off
// on one channel (email, inbox, slack, webhook, digest). Enabled null
// in a change removes the setting (inherit).
type NotificationPreference struct {
	Event   string `json:"event"`
	Channel string `json:"channel"`
	Enabled *bool  `json:"enabled"`
}

// NotificationPreferences are the organization's defaults and the
// caller's own overrides (which win).
type NotificationPreferences struct {
	Organization []NotificationPreference `json:"organization"`
	Mine         []NotificationPreference `json:"mine"`
	Catalogue    []NotificationKind       `json:"catalogue"`
}

// SetNotificationPreferencesRequest changes preferences.
type SetNotificationPreferencesRequest struct {
	Preferences []NotificationPreference `json:"preferences"`
}

// NotificationChannel is a Slack incoming webhook or a generic webhook
// of the organization. Secret (webhooks) is shown only in the create
// answer; deliveries are signed with it.
type NotificationChannel struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"`
	Name      string    `json:"name"`
	URL       string    `json:"url"`
	CreatedAt time.Time `json:"created_at"`
	Secret    string    `json:"secret,omitempty"`
}

// CreateNotificationChannelRequest adds a channel: kind slack or webhook.
type CreateNotificationChannelRequest struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	URL  string `json:"url"`
}

// DeadLetter is a message that ran out of delivery attempts.
type DeadLetter struct {
	ID        int64     `json:"id"`
	Channel   string    `json:"channel"`
	Recipient string    `json:"recipient"`
	Event     string    `json:"event"`
	Target    string    `json:"target,omitempty"`
	Attempts  int       `json:"attempts"`
	LastError string    `json:"last_error"`
	CreatedAt time.Time `json:"created_at"`
}
