package lvm

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/thinlab/thinlab/agent/storage"
)

// LV names, all prefixed with the pool's name so several Thinlab pools can
// share one VG and thin pool (the pool tag, not the prefix, decides
// ownership):
//
//	<pool>_main                      the main thin LV
//	<pool>_snapshot_<YYYYMMDDhhmmss>  snapshots (the part after '@' in the ID)
//	<pool>_c_<clone>                  clones; ':' (allowed in clone names,
//	                                  not in LV names) becomes '+', which
//	                                  clone names never contain
//
// LVM allows [a-zA-Z0-9+_.-] in LV and VG names, at most 127 characters,
// and reserves some substrings for its hidden LVs.
var lvmNameRE = regexp.MustCompile(`^[a-zA-Z0-9+_.][a-zA-Z0-9+_.-]*$`)

// lvmReserved are substrings LVM refuses in LV names (lvm(8), "VALID
// NAMES").
var lvmReserved = []string{"_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig"}

// maxLVName is LVM's limit on LV names (NAME_LEN 128 minus the NUL).
const maxLVName = 127

func mainLV(pool string) string { return pool + "_main" }

func snapshotLV(pool, snapName string) string { return pool + "_" + snapName }

func cloneLV(pool, clone string) string {
	return pool + "_c_" + strings.ReplaceAll(clone, ":", "+")
}

// validateLVName checks a name LVM will accept for an LV or VG. kind names
// the field in the error.
func validateLVName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%w: %s is empty", storage.ErrInvalidName, kind)
	}
	if len(name) > maxLVName {
		return fmt.Errorf("%w: %s %q is %d characters; LVM allows at most %d", storage.ErrInvalidName, kind, name, len(name), maxLVName)
	}
	if !lvmNameRE.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("%w: %s %q: LVM allows only letters, digits and '+', '_', '.', '-' (not first)", storage.ErrInvalidName, kind, name)
	}
	if strings.HasPrefix(name, "snapshot") || strings.HasPrefix(name, "pvmove") {
		return fmt.Errorf("%w: %s %q: LVM reserves names starting with snapshot or pvmove", storage.ErrInvalidName, kind, name)
	}
	for _, r := range lvmReserved {
		if strings.Contains(name, r) {
			return fmt.Errorf("%w: %s %q contains %q, which LVM reserves for its internal volumes", storage.ErrInvalidName, kind, name, r)
		}
	}
	return nil
}

// validateVGName checks a VG name: LVM's charset and length; the LV-only
// reservations do not apply.
func validateVGName(name string) error {
	if name == "" || len(name) > maxLVName || !lvmNameRE.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("%w: vg %q: LVM allows 1-%d letters, digits and '+', '_', '.', '-' (not first)", storage.ErrInvalidName, name, maxLVName)
	}
	return nil
}

// validatePoolName checks a Thinlab pool name for this backend: the generic
// rule, minus ':' (the pool name prefixes LV names, and a ':' mapped to '+'
// there could collide with another pool's clone), with room left for the
// longest LV suffix.
func validatePoolName(name string) error {
	if err := storage.ValidateName("pool name", name); err != nil {
		return err
	}
	if strings.Contains(name, ":") {
		return fmt.Errorf("%w: pool name %q: the lvm backend does not allow ':' in pool names", storage.ErrInvalidName, name)
	}
	return validateLVName("pool name", mainLV(name))
}

// validateCloneName checks a clone name and returns its LV name.
func validateCloneName(pool, name string) (string, error) {
	if err := storage.ValidateName("clone name", name); err != nil {
		return "", err
	}
	lv := cloneLV(pool, name)
	if err := validateLVName("clone name", lv); err != nil {
		return "", fmt.Errorf("clone name %q (LV %s): %w", name, lv, err)
	}
	return lv, nil
}
