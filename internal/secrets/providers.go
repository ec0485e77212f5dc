package secrets

// Provider is a built-in shortcut: a service's hosts, how its credentials
// are sent, and the shape of its tokens (stand-ins get the same prefix so
// SDKs that check it accept them).
type Provider struct {
	Name       string
	Display    string
	Hosts      []string
	Auth       Auth
	TokenShape string // e.g. "sk-ant-api03-..."
}

// Providers is the catalogue, in the order GET /providers lists it. Each
// entry follows the service's own documentation of how API keys are sent.
var Providers = []Provider{
	{Name: "anthropic", Display: "Anthropic", Hosts: []string{"api.anthropic.com"},
		Auth: Auth{Rule: Rule{Type: APIKey, Header: "x-api-key"}}, TokenShape: "sk-ant-api03-..."},
	{Name: "openai", Display: "OpenAI", Hosts: []string{"api.openai.com"},
		Auth: Auth{Rule: Rule{Type: Bearer}}, TokenShape: "sk-proj-..."},
	{Name: "github", Display: "GitHub", Hosts: []string{"api.github.com", "github.com"},
		Auth: Auth{PerHost: []Rule{
			{Type: Bearer, Hosts: []string{"api.github.com"}},
			{Type: Basic, Username: "x-access-token", Hosts: []string{"github.com"}},
		}}, TokenShape: "ghp_..."},
	{Name: "gemini", Display: "Google Gemini", Hosts: []string{"generativelanguage.googleapis.com"},
		Auth: Auth{Rule: Rule{Type: APIKey, Header: "x-goog-api-key"}}, TokenShape: "AIza..."},
	{Name: "openrouter", Display: "OpenRouter", Hosts: []string{"openrouter.ai"},
		Auth: Auth{Rule: Rule{Type: Bearer}}, TokenShape: "sk-or-v1-..."},
	{Name: "groq", Display: "Groq", Hosts: []string{"api.groq.com"},
		Auth: Auth{Rule: Rule{Type: Bearer}}, TokenShape: "gsk_..."},
	{Name: "huggingface", Display: "Hugging Face", Hosts: []string{"huggingface.co"},
		Auth: Auth{Rule: Rule{Type: Bearer}}, TokenShape: "hf_..."},
	{Name: "gitlab", Display: "GitLab", Hosts: []string{"gitlab.com"},
		Auth: Auth{Rule: Rule{Type: Bearer}}, TokenShape: "glpat-..."},
	{Name: "stripe", Display: "Stripe", Hosts: []string{"api.stripe.com"},
		Auth: Auth{Rule: Rule{Type: Bearer}}, TokenShape: "sk_live_..."},
	{Name: "resend", Display: "Resend", Hosts: []string{"api.resend.com"},
		Auth: Auth{Rule: Rule{Type: Bearer}}, TokenShape: "re_..."},
	{Name: "notion", Display: "Notion", Hosts: []string{"api.notion.com"},
		Auth: Auth{Rule: Rule{Type: Bearer}}, TokenShape: "ntn_..."},
}

// LookupProvider returns the provider called name.
func LookupProvider(name string) (Provider, bool) {
	for _, p := range Providers {
		if p.Name == name {
			return p, true
		}
	}
	return Provider{}, false
}
