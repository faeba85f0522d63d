// Renders an Ollama Modelfile TEMPLATE with Go's own text/template, given the data Ollama passes to a template
// that ranges over .Messages (ollama/ollama template/template.go, Values -> Execute): System = every system
// message joined by a blank line, Messages = consecutive messages of one role merged, Response = ""; the
// Modelfile's SYSTEM goes first as a system message when the conversation has none, as Ollama's chat does.
// Input on stdin: {"template": "...", "system": "...", "messages": [{"role": "...", "content": "..."}]};
// output: the prompt.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type input struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []message `json:"messages"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	if in.System != "" && (len(in.Messages) == 0 || in.Messages[0].Role != "system") {
		in.Messages = append([]message{{Role: "system", Content: in.System}}, in.Messages...)
	}
	var system []string
	var collated []*message
	for i := range in.Messages {
		m := &in.Messages[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == m.Role {
			collated[len(collated)-1].Content += "\n\n" + m.Content
		} else {
			collated = append(collated, m)
		}
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(1)
	}
	data := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": collated, "Response": ""}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fmt.Fprintln(os.Stderr, "template does not run:", err)
		os.Exit(1)
	}
}
