package cli

import "github.com/thinlab/thinlab/platform/web"

// The web UI and OIDC sign-in (platform/web, platform/auth) join the
// platform server here; THINLAB_PLATFORM_AUTH_CONFIG names their optional
// configuration file.
func init() { platformSetup = append(platformSetup, web.SetupFromEnv()) }
