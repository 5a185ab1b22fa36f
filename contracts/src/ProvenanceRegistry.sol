// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title Satscale provenance registry
/// @notice One record per paid upscaling job: where its input and output are pinned (IPFS CIDs), what their bytes
/// hash to, which model, weights and parameters produced the output, and the Lightning payment that paid for it.
/// @dev The Lightning payment hash is the record's key: a job is paid exactly once, so a second record for the same
/// payment is refused. A verifier that holds only an image hashes its bytes with sha256 and finds the record through
/// {recordsForInput} or {recordsForOutput}.
contract ProvenanceRegistry is AccessControl {
    /// @notice Accounts allowed to write records (the Satscale service's key).
    bytes32 public constant RECORDER_ROLE = keccak256("RECORDER_ROLE");

    /// @notice One upscaling job's provenance.
    struct Record {
        string inputCid;
        string outputCid;
        bytes32 inputSha256;
        bytes32 outputSha256;
        string modelId;
        bytes32 weightsSha256;
        bytes32 paramsHash;
        // recorder and recordedAt share one storage slot.
        address recorder;
        uint64 recordedAt;
    }

    /// @notice Emitted once per record. The three hashes a verifier may start from are the indexed topics.
    event ProvenanceRecorded(
        bytes32 indexed paymentHash,
        bytes32 indexed inputSha256,
        bytes32 indexed outputSha256,
        string inputCid,
        string outputCid,
        string modelId
    );

    /// @notice A record for this payment hash exists already.
    error AlreadyRecorded(bytes32 paymentHash);
    /// @notice No record exists for this payment hash.
    error RecordNotFound(bytes32 paymentHash);
    /// @notice A CID argument was empty; `field` names it ("inputCid" or "outputCid").
    error EmptyCid(string field);
    /// @notice The model id was empty.
    error EmptyModelId();
    /// @notice A hash argument was zero; `field` names it.
    error ZeroHash(string field);
    /// @notice The admin passed to the constructor was the zero address.
    error ZeroAdmin();

    mapping(bytes32 paymentHash => Record) private _records;
    mapping(bytes32 inputSha256 => bytes32[] paymentHashes) private _byInput;
    mapping(bytes32 outputSha256 => bytes32[] paymentHashes) private _byOutput;

    /// @param admin Account given DEFAULT_ADMIN_ROLE; it grants RECORDER_ROLE to the service's key.
    constructor(address admin) {
        if (admin == address(0)) revert ZeroAdmin();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Records the provenance of one paid job. Only RECORDER_ROLE may call it.
    /// @param paymentHash Lightning payment hash of the job's invoice; unique across all records.
    /// @param inputCid IPFS CID of the input image.
    /// @param outputCid IPFS CID of the upscaled output image.
    /// @param inputSha256 sha256 of the input image's bytes.
    /// @param outputSha256 sha256 of the output image's bytes.
    /// @param modelId Satscale model id that produced the output (e.g. "realesrgan-x4plus").
    /// @param weightsSha256 sha256 of the model's weights file.
    /// @param paramsHash Hash of the job's canonical parameters (scale, tiling, precision, ...).
    function record(
        bytes32 paymentHash,
        string calldata inputCid,
        string calldata outputCid,
        bytes32 inputSha256,
        bytes32 outputSha256,
        string calldata modelId,
        bytes32 weightsSha256,
        bytes32 paramsHash
    ) external onlyRole(RECORDER_ROLE) {
        if (paymentHash == bytes32(0)) revert ZeroHash("paymentHash");
        if (inputSha256 == bytes32(0)) revert ZeroHash("inputSha256");
        if (outputSha256 == bytes32(0)) revert ZeroHash("outputSha256");
        if (weightsSha256 == bytes32(0)) revert ZeroHash("weightsSha256");
        // Jobs without parameters still hash their (empty) canonical form, so zero means "not filled in".
        if (paramsHash == bytes32(0)) revert ZeroHash("paramsHash");
        if (bytes(inputCid).length == 0) revert EmptyCid("inputCid");
        if (bytes(outputCid).length == 0) revert EmptyCid("outputCid");
        if (bytes(modelId).length == 0) revert EmptyModelId();

        Record storage r = _records[paymentHash];
        // msg.sender is never the zero address, so a set recorder marks an existing record.
        if (r.recorder != address(0)) revert AlreadyRecorded(paymentHash);

        r.inputCid = inputCid;
        r.outputCid = outputCid;
        r.inputSha256 = inputSha256;
        r.outputSha256 = outputSha256;
        r.modelId = modelId;
        r.weightsSha256 = weightsSha256;
        r.paramsHash = paramsHash;
        r.recorder = msg.sender;
        r.recordedAt = uint64(block.timestamp);

        _byInput[inputSha256].push(paymentHash);
        _byOutput[outputSha256].push(paymentHash);

        emit ProvenanceRecorded(paymentHash, inputSha256, outputSha256, inputCid, outputCid, modelId);
    }

    /// @notice The record stored for `paymentHash`; reverts with {RecordNotFound} when there is none.
    function recordOf(bytes32 paymentHash) external view returns (Record memory) {
        Record storage r = _records[paymentHash];
        if (r.recorder == address(0)) revert RecordNotFound(paymentHash);
        return r;
    }

    /// @notice Whether a record exists for `paymentHash`.
    function exists(bytes32 paymentHash) external view returns (bool) {
        return _records[paymentHash].recorder != address(0);
    }

    /// @notice Payment hashes of every record whose input bytes hash to `inputSha256`, oldest first.
    /// @dev Returns the whole list: one image is upscaled a handful of times, not thousands.
    function recordsForInput(bytes32 inputSha256) external view returns (bytes32[] memory) {
        return _byInput[inputSha256];
    }

    /// @notice Payment hashes of every record whose output bytes hash to `outputSha256`, oldest first.
    /// @dev Usually one; more only if a deterministic job was paid for and run again.
    function recordsForOutput(bytes32 outputSha256) external view returns (bytes32[] memory) {
        return _byOutput[outputSha256];
    }
}
