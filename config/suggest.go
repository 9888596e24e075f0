package config

import "strings"

// maxSuggestDistance is how far a typo may be from a known name and still
// get a suggestion. Two edits catch a dropped, doubled or swapped letter
// ("Adress", "PublickKey", "Endpiont") without proposing unrelated names.
const maxSuggestDistance = 2

// suggest returns the known name closest to got, ignoring case, or "" when
// none is within maxSuggestDistance. Ties go to the earlier name, so the
// answer is stable.
func suggest(got string, known []string) string {
	if len(got) > 64 {
		return "" // not a typo of any of our short names; skip the O(n·m) work
	}
	g := []rune(strings.ToLower(got))
	best, bestDist := "", maxSuggestDistance+1
	for _, k := range known {
		if d := editDistance(g, []rune(strings.ToLower(k))); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance: insertions, deletions and
// substitutions each cost one.
func editDistance(a, b []rune) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
