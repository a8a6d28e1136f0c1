// An external agent in Go: "greeter" answers calls; a Python agent (agentd's relay) calls it by name.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/mabeam/mabeam/clients/go/mabeam"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	greeter := &mabeam.Agent{Endpoint: os.Getenv("MABEAM_MESHD"), Names: []string{"greeter-go"},
		OnCall: func(ctx context.Context, in *mabeam.Incoming) (any, error) {
			var name string
			if err := in.Decode(&name); err != nil {
				return nil, err
			}
			return "hello, " + name, nil
		}}
	if err := greeter.Start(ctx, 10*time.Second); err != nil {
		panic(err)
	}
	agents, err := mabeam.DialAgents(os.Getenv("MABEAM_AGENTD"))
	if err != nil {
		panic(err)
	}
	defer agents.Close()
	relay := fmt.Sprintf("relay-%d", os.Getpid())
	if _, err := agents.Spawn(ctx, "relay", map[string]any{}, mabeam.SpawnOptions{Name: relay}); err != nil {
		panic(err)
	}
	var reply string
	err = agents.Call(ctx, relay, map[string]any{"to": "greeter-go", "msg": "world"}, &reply)
	fmt.Println(reply, err) // hello, world <nil>
}
