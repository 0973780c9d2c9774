package advice

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// Bucket is one bucket of a cumulative histogram: Count observations were <= LE.
type Bucket struct {
	LE    float64 `json:"le"`
	Count float64 `json:"count"`
}

// bucketJSON is a Bucket in JSON: le is a number, or the string "+Inf" (JSON has no
// infinity), as in Prometheus' own JSON.
type bucketJSON struct {
	LE    any     `json:"le"`
	Count float64 `json:"count"`
}

// MarshalJSON implements json.Marshaler.
func (b Bucket) MarshalJSON() ([]byte, error) {
	var le any = b.LE
	if math.IsInf(b.LE, 1) {
		le = "+Inf"
	}
	return json.Marshal(bucketJSON{le, b.Count})
}

// UnmarshalJSON implements json.Unmarshaler.
func (b *Bucket) UnmarshalJSON(data []byte) error {
	var v bucketJSON
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	switch le := v.LE.(type) {
	case float64:
		b.LE = le
	case string:
		f, err := strconv.ParseFloat(le, 64)
		if err != nil {
			return fmt.Errorf("bucket bound %q: %w", le, err)
		}
		b.LE = f
	default:
		return fmt.Errorf("bucket bound %v: not a number", v.LE)
	}
	b.Count = v.Count
	return nil
}
