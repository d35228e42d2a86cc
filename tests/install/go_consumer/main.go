// A program of another module that requires the Go binding, built against
// an installed libcommvq (check_go_module.sh): Open with no path finds the
// library, attention runs from codes, and failures match the binding's
// sentinel errors.
//
//	consumer CODEBOOK
package main

import (
	"errors"
	"fmt"
	"math"
	"os"

	commvq "commvq.org/libcommvq/bindings/go"
)

func main() {
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(1)
	}
}

func run(codebook string) error {
	lib, err := commvq.Open("")
	if err != nil {
		return err
	}
	cb, err := lib.LoadCodebook(codebook)
	if err != nil {
		return err
	}
	defer cb.Close()
	info, err := cb.Info()
	if err != nil {
		return err
	}
	params := lib.DefaultCacheParams()
	params.Window = 4
	params.MaxTokens = 256
	cache, err := cb.NewCache(params)
	if err != nil {
		return err
	}
	defer cache.Close()

	const tokens = 16
	kvRow, qRow := int(info.NKVHeads*info.HeadDim), int(info.NQHeads*info.HeadDim)
	k, v, q := make([]float32, tokens*kvRow), make([]float32, tokens*kvRow), make([]float32, qRow)
	for i := range k {
		k[i], v[i] = float32(math.Sin(float64(i))), float32(math.Cos(float64(3*i)))
	}
	for i := range q {
		q[i] = float32(math.Sin(float64(7 * i)))
	}
	if err := cache.Append(0, 0, k, v); err != nil {
		return err
	}
	out, lse := make([]float32, qRow), make([]float32, info.NQHeads)
	if err := cache.Attend(0, 0, q, out, lse, commvq.AttendCausal); err != nil {
		return err
	}
	for _, x := range out {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fmt.Errorf("non-finite attention output")
		}
	}

	err = cache.Attend(info.NLayers, 0, q, out, lse, commvq.AttendCausal)
	if !errors.Is(err, commvq.ErrOutOfRange) {
		return fmt.Errorf("layer %d: got %v, want ErrOutOfRange", info.NLayers, err)
	}
	cache.Close()
	if _, err := cache.SeqLength(0); !errors.Is(err, commvq.ErrClosed) {
		return fmt.Errorf("closed cache: got %v, want ErrClosed", err)
	}
	fmt.Printf("libcommvq %s (opened as %s): attention from codes, ErrOutOfRange and ErrClosed ok\n",
		lib.Version(), lib.Path)
	return nil
}
