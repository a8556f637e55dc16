package main

import "context"

func benchDaemonIdle(ctx context.Context, env *Env) ([]Result, error) { return nil, errNotMeasured }

func benchWireBytes(ctx context.Context, env *Env) ([]Result, error) { return nil, errNotMeasured }

func benchReconnectDrain(ctx context.Context, env *Env) ([]Result, error) { return nil, errNotMeasured }
