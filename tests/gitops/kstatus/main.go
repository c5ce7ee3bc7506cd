// Command kstatus prints the status that kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library
// Flux and kpt use to wait for resources, computes for each object it reads.
//
// Input on stdin: a JSON object, or a JSON list of objects, or a Kubernetes List ({"items": [...]}).
// Output on stdout: one JSON object per input object, in order: {"name", "status", "message"}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

// objects decodes with the API machinery's JSON, which keeps whole numbers as int64 (as unstructured wants).
func objects(data []byte) ([]map[string]interface{}, error) {
	var list []map[string]interface{}
	if err := utiljson.Unmarshal(data, &list); err == nil {
		return list, nil
	}
	var single map[string]interface{}
	if err := utiljson.Unmarshal(data, &single); err != nil {
		return nil, fmt.Errorf("stdin is neither a JSON object nor a list of objects: %w", err)
	}
	if items, ok := single["items"].([]interface{}); ok {
		for _, item := range items {
			obj, ok := item.(map[string]interface{})
			if !ok {
				return nil, fmt.Errorf("an item of the list is not an object")
			}
			list = append(list, obj)
		}
		return list, nil
	}
	return []map[string]interface{}{single}, nil
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading stdin:", err)
		os.Exit(2)
	}
	objs, err := objects(data)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, obj := range objs {
		u := &unstructured.Unstructured{Object: obj}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s/%s: %v\n", u.GetKind(), u.GetName(), err)
			os.Exit(1)
		}
		if err := out.Encode(result{Name: u.GetName(), Status: string(res.Status), Message: res.Message}); err != nil {
			fmt.Fprintln(os.Stderr, "writing stdout:", err)
			os.Exit(2)
		}
	}
}
