package config

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// DLEImport is the result of ImportDLE: a Thinlab agent configuration in
// YAML and what of the DLE configuration it could not carry over.
type DLEImport struct {
	YAML []byte
	// NotCarried names each DLE option (dotted path) that has no Thinlab
	// counterpart or was not understood, with the reason.
	NotCarried []string
	// Check lists what the administrator must review (guessed values,
	// secrets to move out of the file).
	Check []string
}

// dleReader walks a parsed DLE server.yml and remembers which leaves were
// used, so that every other one is reported as not carried over.
type dleReader struct {
	root map[string]any
	used map[string]bool
}

func (d *dleReader) get(path string) (any, bool) {
	var cur any = d.root
	for k := range strings.SplitSeq(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	d.markUsed(path, cur)
	return cur, true
}

func (d *dleReader) markUsed(path string, v any) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			d.markUsed(path+"."+k, c)
		}
	default:
		d.used[path] = true
	}
}

func (d *dleReader) str(path string) string {
	v, ok := d.get(path)
	if !ok || v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func (d *dleReader) num(path string) int {
	n, _ := strconv.Atoi(d.str(path))
	return n
}

func (d *dleReader) list(path string) []string {
	v, ok := d.get(path)
	if !ok {
		return nil
	}
	items, _ := v.([]any)
	out := make([]string, 0, len(items))
	for _, it := range items {
		out = append(out, fmt.Sprint(it))
	}
	return out
}

func (d *dleReader) leaves(prefix string, v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(x)) {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			d.leaves(p, x[k], out)
		}
	default:
		if !d.used[prefix] {
			*out = append(*out, prefix+": no Thinlab counterpart")
		}
	}
}

// ImportDLE turns a Database Lab Engine 3.x/4.x server.yml into a
// Thinlab agent configuration (logical retrieval, pools, provisioning,
// cloning, refresh schedule, pre-processing) and names every option it
// could not carry over.
func ImportDLE(raw []byte) (*DLEImport, error) {
	d := &dleReader{used: map[string]bool{}}
	if err := yaml.Unmarshal(raw, &d.root); err != nil {
		return nil, fmt.Errorf("not a DLE configuration (YAML): %w", err)
	}
	if d.root == nil {
		return nil, fmt.Errorf("the DLE configuration is empty")
	}
	res := &DLEImport{}
	out := map[string]any{}
	set := func(path string, v any) {
		m := out
		keys := strings.Split(path, ".")
		for _, k := range keys[:len(keys)-1] {
			next, ok := m[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[k] = next
			}
			m = next
		}
		m[keys[len(keys)-1]] = v
	}

	// Server.
	if tok := d.str("server.verificationToken"); tok != "" {
		set("server.verificationToken", tok)
		res.Check = append(res.Check, "server.verificationToken was copied from the DLE file: keep the file private (mode 0600)")
	}
	if port := d.num("server.port"); port != 0 {
		set("server.port", port)
	}

	// Pools: DLE finds its ZFS pools under poolManager.mountDir; the
	// selected pool (or DLE's default name) becomes the one pool.
	pool := d.str("poolManager.selectedPool")
	if pool == "" {
		pool = "dblab_pool"
	}
	mountDir := d.str("poolManager.mountDir")
	if mountDir == "" {
		mountDir = "/var/lib/dblab"
	}
	set("pools", []any{map[string]any{"name": pool, "mode": "zfs", "path": pool}})
	res.Check = append(res.Check, fmt.Sprintf("pools[0]: DLE found its ZFS pools under %s; set path to the pool's ZFS dataset (assumed %q) and mode if it is not zfs", mountDir, pool))
	if pool != "dblab_pool" {
		set("retrieval.pool", pool) // DLE's selectedPool pins this agent to it
	}

	// Provisioning and cloning.
	if from, to := d.num("provision.portPool.from"), d.num("provision.portPool.to"); from != 0 || to != 0 {
		set("provision.portPool", map[string]any{"from": from, "to": to})
	}
	if addrs := d.str("provision.cloneAccessAddresses"); addrs != "" {
		set("provision.listenAddresses", addrs)
	}
	if host := d.str("cloning.accessHost"); host != "" {
		set("provision.accessHost", host)
	}
	if v, ok := d.get("cloning.maxIdleMinutes"); ok {
		n, _ := strconv.Atoi(fmt.Sprint(v))
		set("cloning.maxIdleMinutes", n)
	}
	if cfgs, ok := d.get("databaseConfigs.configs"); ok {
		if m, ok := cfgs.(map[string]any); ok && len(m) > 0 {
			settings := map[string]any{}
			for k, v := range m {
				settings[k] = fmt.Sprint(v)
			}
			set("provision.cloneDefaults.settings", settings)
		}
	}
	if user := d.str("global.database.username"); user != "" && user != "postgres" {
		res.NotCarried = append(res.NotCarried, "global.database.username: clones' superuser is always postgres in Thinlab")
	} else {
		d.get("global.database.username")
	}
	if db := d.str("global.database.dbname"); db != "" {
		set("provision.cloneDefaults.dbName", db)
	}

	// Retrieval.
	jobs := d.list("retrieval.jobs")
	logicalJobs := slices.ContainsFunc(jobs, func(j string) bool { return strings.HasPrefix(j, "logical") })
	physicalJobs := slices.ContainsFunc(jobs, func(j string) bool { return strings.HasPrefix(j, "physical") })
	switch {
	case logicalJobs:
		set("retrieval.mode", "logical")
	case physicalJobs:
		res.NotCarried = append(res.NotCarried, "retrieval.jobs: physical retrieval is configured under retrieval.physical (see docs/agent-config.md); this importer carries logical retrieval only")
	}
	if tt := d.str("retrieval.refresh.timetable"); tt != "" {
		set("retrieval.refreshSchedule", tt)
	}
	if v, ok := d.get("retrieval.refresh.skipStartRefresh"); ok {
		set("retrieval.refreshOnStart", fmt.Sprint(v) != "true")
	}
	const dump = "retrieval.spec.logicalDump.options."
	const restore = "retrieval.spec.logicalRestore.options."
	if logicalJobs {
		switch d.str(dump + "source.type") {
		case "rdsIam":
			set("retrieval.source.iam", "aws-rds")
			set("retrieval.source.region", d.str(dump+"source.rdsIam.awsRegion"))
			if ca := d.str(dump + "source.rdsIam.sslRootCert"); ca != "" {
				set("retrieval.source.sslRootCert", ca)
			}
			if id := d.str(dump + "source.rdsIam.dbInstanceIdentifier"); id != "" {
				res.Check = append(res.Check, fmt.Sprintf("retrieval.source.host: DLE looked up RDS instance %q; set its endpoint", id))
			}
		default:
			d.get(dump + "source.type")
		}
		for _, k := range []string{"host", "port", "dbname", "username"} {
			if v := d.str(dump + "source.connection." + k); v != "" {
				if k == "port" {
					n, _ := strconv.Atoi(v)
					set("retrieval.source.port", n)
				} else {
					set("retrieval.source."+k, v)
				}
			}
		}
		if pw := d.str(dump + "source.connection.password"); pw != "" {
			set("retrieval.source.password", pw)
			res.Check = append(res.Check, "retrieval.source.password was copied in clear: move it to an environment variable and set retrieval.source.passwordEnv")
		}
		jobsN := max(d.num(dump+"parallelJobs"), d.num(restore+"parallelJobs"))
		if jobsN > 0 {
			set("retrieval.jobs", jobsN)
		}
		if v, ok := d.get(dump + "immediateRestore.enabled"); ok && fmt.Sprint(v) == "true" {
			set("retrieval.logical.format", FormatPiped)
		} else if _, ok := d.get(dump + "dumpLocation"); ok {
			set("retrieval.logical.format", FormatDirectory)
		}
		d.get(restore + "dumpLocation")
		var dbs []any
		var tables []any
		for _, section := range []string{dump + "databases", restore + "databases"} {
			v, ok := d.get(section)
			if !ok {
				continue
			}
			m, _ := v.(map[string]any)
			for _, name := range slices.Sorted(maps.Keys(m)) {
				if !slices.Contains(dbs, any(name)) {
					dbs = append(dbs, name)
				}
				if spec, ok := m[name].(map[string]any); ok {
					tables = append(tables, anyList(spec["tables"])...)
				}
			}
		}
		if len(dbs) > 0 {
			set("retrieval.databases", dbs)
		}
		if len(tables) > 0 {
			set("retrieval.logical.includeTables", tables)
			res.Check = append(res.Check, "retrieval.logical.includeTables: DLE's per-database tables now apply to every copied database")
		}
		for key, path := range map[string]string{"dumpOptions": dump + "customOptions", "restoreOptions": restore + "customOptions"} {
			var keep []any
			for i, o := range d.list(path) {
				if why := checkToolOption(o, dumpShortRefused, dumpShortValued, dumpLongRefused); key == "restoreOptions" {
					why = checkToolOption(o, restoreShortRefused, restoreShortValued, restoreLongRefused)
					if why != "" {
						res.NotCarried = append(res.NotCarried, fmt.Sprintf("%s[%d] %q: %s", path, i, o, why))
						continue
					}
				} else if why != "" {
					res.NotCarried = append(res.NotCarried, fmt.Sprintf("%s[%d] %q: %s", path, i, o, why))
					continue
				}
				keep = append(keep, o)
			}
			if len(keep) > 0 {
				set("retrieval.logical."+key, keep)
			}
		}
	}
	for _, qp := range []string{restore + "queryPreprocessing.queryPath", "retrieval.spec.logicalSnapshot.options.dataPatching.queryPreprocessing.queryPath"} {
		if p := d.str(qp); p != "" {
			if r, _ := out["retrieval"].(map[string]any); r != nil && r["preprocess"] != nil {
				res.NotCarried = append(res.NotCarried, qp+": Thinlab has one pre-processing SQL directory (retrieval.preprocess.sqlDir)")
				continue
			}
			set("retrieval.preprocess.sqlDir", p)
			if db := d.str("global.database.dbname"); db != "" {
				set("retrieval.preprocess.dbName", db)
			}
		}
	}
	if s := d.str("retrieval.spec.logicalSnapshot.options.preprocessingScript"); s != "" {
		set("retrieval.preprocess.scripts", []any{s})
		res.Check = append(res.Check, "retrieval.preprocess.scripts: the script now runs as provision.osUser (not root, not in a container), with PGHOST/PGPORT/PGDATABASE set")
	}

	d.leaves("", d.root, &res.NotCarried)
	slices.Sort(res.NotCarried)
	res.NotCarried = slices.Compact(res.NotCarried)

	b, err := yaml.Marshal(out)
	if err != nil {
		return nil, err
	}
	res.YAML = b
	return res, nil
}

func anyList(v any) []any {
	l, _ := v.([]any)
	return l
}
