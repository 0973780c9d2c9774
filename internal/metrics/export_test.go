package metrics

import "slices"

// Contract returns every series declared in contract.go, for the contract test.
func Contract() []Series { return slices.Clone(contract) }
