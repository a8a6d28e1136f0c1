package main

import (
	"context"
	"fmt"
	"os"

	"github.com/mabeam/mabeam/clients/go/mabeam"
)

func main() {
	mesh, _ := mabeam.DialMesh(os.Getenv("MABEAM_MESHD")) // a meshd's host:port
	members, err := mesh.Members(context.Background())
	fmt.Println(len(members), "members", err)
	leader, err := mesh.Leader(context.Background(), "mesh")
	fmt.Println("leader", leader.GetNodeId(), err)
}
