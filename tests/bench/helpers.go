package main

import "context"

func benchHelperThroughput(ctx context.Context, env *Env) ([]Result, error) {
	return nil, errNotMeasured
}
