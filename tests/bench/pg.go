package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldpush/herald/internal/pgtest"
)

// The PostgreSQL figures run herald-server nodes on a throwaway cluster with
// PostgreSQL's default durability (fsync and synchronous commit on), like
// the sqlite figure's --sync full.

func benchServerThroughputPG1(ctx context.Context, env *Env) ([]Result, error) {
	return benchPG(ctx, env, 1)
}

func benchServerThroughputPG2(ctx context.Context, env *Env) ([]Result, error) {
	return benchPG(ctx, env, 2)
}

func benchPG(ctx context.Context, env *Env, nodes int) ([]Result, error) {
	c, err := pgtest.StartWith(pgtest.Options{Durable: true})
	if err != nil {
		return nil, err
	}
	defer c.Stop()
	url, err := c.NewDatabase(ctx)
	if err != nil {
		return nil, err
	}
	var servers []*benchServer
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	for range nodes {
		s, err := startBenchServerDB(ctx, env, url)
		if err != nil {
			return nil, err
		}
		servers = append(servers, s)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	var lsn0 string
	var pgCPU0 time.Duration
	extra := func(done bool) string {
		if !done {
			pgCPU0 = clusterCPU(c.Pid())
			_ = conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn0)
			return ""
		}
		pgCPU := clusterCPU(c.Pid()) - pgCPU0
		var wal int64
		_ = conn.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint`, lsn0).Scan(&wal)
		return fmt.Sprintf("|pg:%d:%d", pgCPU.Microseconds(), wal)
	}
	t, err := throughput(ctx, env, servers, extra, "")
	if err != nil {
		return nil, err
	}
	// The note ends with |pg:<cpu µs>:<wal bytes>; make it readable.
	note, pgPart, _ := strings.Cut(t.note, "|pg:")
	f := strings.Split(pgPart, ":")
	pgCPU, _ := strconv.ParseInt(f[0], 10, 64)
	wal, _ := strconv.ParseInt(f[1], 10, 64)
	del := float64(max(t.del, 1))
	note += fmt.Sprintf(", PostgreSQL %.0f µs; WAL %.0f bytes/msg", float64(pgCPU)/del, float64(wal)/del)
	sizes, err := pgSizes(ctx, conn)
	if err != nil {
		return nil, err
	}
	note += "; " + sizes
	name := fmt.Sprintf("server_throughput_pg%d_msgs_per_s", nodes)
	return []Result{
		{Name: name, Label: fmt.Sprintf("server on PostgreSQL, %d node(s): delivered+acked msgs/s", nodes), Value: t.delRate,
			Unit: "msgs/s", Target: 25000, Note: note},
	}, nil
}

// clusterCPU sums the CPU time of the postmaster and its children.
func clusterCPU(postmaster int) time.Duration {
	total, _ := procCPU(postmaster)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(postmaster) {
			d, _ := procCPU(pid)
			total += d
		}
	}
	return total
}

// pgSizes measures the space of a device (device, channel and route rows with
// their indexes) and of a pending 4 KB message, by filling a scratch copy of
// the tables.
func pgSizes(ctx context.Context, conn *pgx.Conn) (string, error) {
	const n = 20000
	stmts := []string{
		`CREATE TEMP TABLE d (LIKE devices INCLUDING ALL)`,
		`CREATE TEMP TABLE c (LIKE channels INCLUDING ALL)`,
		`CREATE TEMP TABLE r (LIKE routes INCLUDING ALL)`,
		`CREATE TEMP TABLE m (LIKE messages INCLUDING ALL) WITH (toast_tuple_target = 8160)`,
		`INSERT INTO d SELECT md5(i::text), 1764000000000 FROM generate_series(1, 20000) i`,
		`INSERT INTO c SELECT substr(md5('t' || i), 1, 22), md5(i::text), 'chan-' || md5('c' || i), NULL, 1764000000000 FROM generate_series(1, 20000) i`,
		`INSERT INTO r SELECT md5(i::text), 'http://10.0.0.1:8080', 1764000000000000000 + i FROM generate_series(1, 20000) i`,
		`CREATE TEMP TABLE s (LIKE messages INCLUDING ALL) WITH (toast_tuple_target = 8160)`,
		`INSERT INTO m (id, uaid, chid, version, topic, data, headers, expiry)
			SELECT substr(md5('m' || i), 1, 22), md5((i % 2000)::text), 'chan-' || md5('c' || i), substr(md5('m' || i), 1, 22), '',
				decode(repeat(md5(i::text), 256), 'hex'), '{"encoding":"aes128gcm"}', 1764000000000 FROM generate_series(1, 20000) i`,
		`INSERT INTO s (id, uaid, chid, version, topic, data, headers, expiry)
			SELECT substr(md5('m' || i), 1, 22), md5((i % 2000)::text), 'chan-' || md5('c' || i), substr(md5('m' || i), 1, 22), '',
				decode(repeat(md5(i::text), 16), 'hex'), '{"encoding":"aes128gcm"}', 1764000000000 FROM generate_series(1, 20000) i`,
	}
	for _, q := range stmts {
		if _, err := conn.Exec(ctx, q); err != nil {
			return "", fmt.Errorf("size measurement: %w", err)
		}
	}
	var dev, msg, small, toast int64
	err := conn.QueryRow(ctx, `SELECT pg_total_relation_size('d') + pg_total_relation_size('c') + pg_total_relation_size('r'),
		pg_total_relation_size('m'), pg_total_relation_size('s'),
		coalesce(pg_relation_size(nullif((SELECT reltoastrelid FROM pg_class WHERE relname = 'm'), 0)), 0)`).Scan(&dev, &msg, &small, &toast)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("space: %d bytes per device (1 channel, routed), %d bytes per pending 4 KB message (TOAST heap %d bytes), %d bytes per pending 256-byte message",
		dev/n, msg/n, toast, small/n), nil
}
