package main

import "context"

func benchServerThroughput(ctx context.Context, env *Env) ([]Result, error) {
	return nil, errNotMeasured
}

func benchServerIdleConn(ctx context.Context, env *Env) ([]Result, error) { return nil, errNotMeasured }
